"""`segmodels predict` on images of any size: refused from the header above --max-pixels, segmented within a real
memory limit with --size, out of memory reported in one line, and the banded resizing equal to F.interpolate.

The memory tests run the command in a child that lowers its own address-space limit (RLIMIT_AS) once torch and
segmodels are imported: the headroom is then what the command itself may use, whatever the libraries reserve.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_checkpoint
from PIL import Image

from segmodels.cli import main
from segmodels.data.images import MAX_PIXELS, TooManyPixelsError, check_image
from segmodels.data.loader import normalize
from segmodels.engine.inference import load_model, predict_scores
from segmodels.engine.predict import _out_of_memory_message, _resized_bands, check_images

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SIDE = 12000  # 144 megapixels: above the default --max-pixels (and Pillow's warning), below Pillow's error
GIB = 1 << 30

# Runs segmodels in a child whose address space may grow by argv[1] bytes beyond the libraries' own.
_LIMITED = """
import resource, sys
import segmodels.cli, segmodels.data.loader, segmodels.engine.inference, segmodels.engine.predict, segmodels.models
from segmodels.models import build_model
build_model("resnet18", "fcn", num_classes=2, pretrained=None)  # every module a model load maps
in_use = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
limit = in_use + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
if sys.argv[2] == "check":
    from segmodels.data.images import read_rgb8
    from segmodels.engine.predict import check_images
    print(len(check_images(sys.argv[3:], max_pixels=200_000_000)), "checked")
    for path in sys.argv[3:]:
        try:
            read_rgb8(path, max_pixels=None)
            print("decoded", path)
        except MemoryError:
            print("no memory to decode", path)
    sys.exit(0)
sys.exit(segmodels.cli.main(sys.argv[2:]))
"""


def _limited(headroom: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", _LIMITED, str(headroom), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    random_checkpoint(path, num_classes=5)
    return path


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """Flat-colour 12000×12000 images, a JPEG (2 MB on disk) and a PNG (0.5 MB), and a grey JPEG above twice
    Pillow's decompression-bomb limit."""
    folder = tmp_path_factory.mktemp("large")
    field = Image.new("RGB", (SIDE, SIDE), (90, 140, 60))
    field.save(folder / "field.jpg", quality=90)
    field.save(folder / "meadow.png")
    del field
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    Image.new("L", (side, side), 80).save(folder / "bomb.jpg")
    return folder


def test_an_image_above_max_pixels_is_refused_from_its_header_before_the_model(tmp_path, large, capsys):
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(large / "field.jpg"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "missing.pt" not in err
    assert (f"{large / 'field.jpg'} has 12000×12000 = 144000000 pixels, more than --max-pixels {MAX_PIXELS}; "
            "raise --max-pixels") in err  # fmt: skip
    assert not out.exists()
    # The header alone decides: a file cut after its first kilobyte (no pixel data) gets the same answer.
    cut = tmp_path / "cut.png"
    cut.write_bytes((large / "meadow.png").read_bytes()[:1024])
    with pytest.raises(TooManyPixelsError, match=r"cut\.png has 12000×12000"):
        check_image(cut)
    with pytest.raises(ValueError, match=r"cannot read image .*cut\.png"):
        check_image(cut, max_pixels=None)
    # Above twice Pillow's own limit, where Pillow raises its error, the message is still ours.
    code = main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(large / "bomb.jpg"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "bomb.jpg has " in err and "more than --max-pixels" in err and "decompression" not in err


@pytest.mark.slow  # decodes, segments and writes 144 megapixels: about 20 s on 2 cores
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # reading the outputs' headers
def test_a_12000_square_image_is_segmented_within_a_memory_limit(tmp_path, checkpoint, large):
    out = tmp_path / "out"
    run = _limited(2 * GIB, "predict", "--checkpoint", str(checkpoint), str(large / "field.jpg"), "--out",
                   str(out), "--size", "64", "128", "--max-pixels", "150000000", "--device", "cpu")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "wrote masks of 1 image(s)" in run.stdout
    for key, mode in (("trainid", "L"), ("color", "RGB"), ("overlay", "RGB")):
        with Image.open(out / f"field_{key}.png") as img:  # the header only
            assert (img.size, img.mode) == ((SIDE, SIDE), mode)


def test_running_out_of_memory_is_one_line_naming_the_file_and_the_options(tmp_path, checkpoint):
    small = tmp_path / "street.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(small)
    # A forward pass at 20000×20000 needs 4.8 GB for its input alone.
    run = _limited(int(1.5 * GIB), "predict", "--checkpoint", str(checkpoint), str(small), "--out",
                   str(tmp_path / "out"), "--size", "20000", "20000", "--device", "cpu")  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"segmodels predict: error: out of memory segmenting {small} (40×30 = 1200 pixels) on cpu")
    assert line.endswith("give a smaller --size than 20000 20000")


def test_the_out_of_memory_line_names_the_options_that_help():
    line = _out_of_memory_message(Path("big.tif"), (12000, 9000), None, torch.device("cuda", 1))
    assert line == ("out of memory segmenting big.tif (12000×9000 = 108000000 pixels) on cuda:1: give --size H W (e.g. "
                    "the training resolution), use --device cpu or refuse such images before any work with a "
                    "--max-pixels below 108000000")  # fmt: skip
    line = _out_of_memory_message(Path("big.tif"), (12000, 9000), (512, 1024), torch.device("cpu"))
    assert line.endswith("on cpu: give a smaller --size than 512 1024 or refuse such images before any work with a "
                         "--max-pixels below 108000000")  # fmt: skip


@pytest.mark.slow  # checks images of 144 and 180 megapixels in a child: about 10 s on 2 cores
def test_checking_large_images_does_not_decode_them(large):
    """With 256 MiB to spare a full decode of these images fails, and the check before the model loads passes."""
    paths = [str(large / name) for name in ("field.jpg", "meadow.png", "bomb.jpg")]
    run = _limited(GIB // 4, "check", *paths)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "3 checked" in run.stdout
    assert run.stdout.count("no memory to decode") == 3, run.stdout


def test_out_must_be_a_folder_before_the_model_loads(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    taken = tmp_path / "masks.png"
    taken.write_bytes(b"")
    code = main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(image), "--out", str(taken)])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {taken} exists and is not a folder" in err and "missing.pt" not in err
    code = main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(image), "--out", str(taken / "sub")])
    assert code == 2 and f"{taken} exists and is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(("n_in", "w_in", "size"), [
    (37, 53, (8, 16)), (8, 16, (37, 53)), (33, 17, (100, 7)), (5, 5, (999, 1001)), (64, 128, (64, 300)),
    (100, 90, (100, 90)), (1000, 1500, (64, 128)), (64, 128, (3000, 40)),
])  # fmt: skip
def test_banded_resize_is_f_interpolate(n_in, w_in, size):
    source = torch.randn(1, 7, n_in, w_in, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(source, size=size, mode="bilinear", align_corners=False)
    got = torch.empty_like(expected)
    bands = 0
    for r0, band in _resized_bands(lambda index: source.index_select(2, index), n_in, w_in, size, channels=7):
        got[:, :, r0 : r0 + band.shape[2]] = band
        bands += 1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert bands >= (2 if size[0] * size[1] >= 1 << 19 else 1)


def test_masks_are_those_of_resizing_the_whole_image_at_once(tmp_path, checkpoint):
    """The previous way, full-size float input and scores of every class upsampled at once, gives the same masks."""
    model, _ = load_model(checkpoint, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    for i, ((h, w), size, flip) in enumerate([((300, 400), (64, 128), False), ((300, 400), (64, 128), True),
                                              ((250, 190), (512, 300), True), ((37, 53), None, True)]):  # fmt: skip
        noise = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)  # regions, not pixel noise
        rgb = np.asarray(Image.fromarray(noise).resize((w, h), Image.Resampling.BILINEAR))
        Image.fromarray(rgb).save(tmp_path / f"im{i}.png")
        args = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / f"im{i}.png"), "--out", str(tmp_path),
                "--device", "cpu", "--no-amp", *(["--flip"] if flip else [])]  # fmt: skip
        assert main([*args, *(["--size", *map(str, size)] if size else [])]) == 0
        x = normalize(torch.from_numpy(rgb.copy()))
        if size is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        scores = predict_scores(model, x, flip=flip, out_size=(h, w))
        expected = scores.argmax(1)[0].to(torch.uint8).numpy()
        assert len(np.unique(expected)) > 1
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"im{i}_trainid.png")), expected)


def test_check_images_names_the_option_and_the_cli_default_is_the_decoders(tmp_path):
    from segmodels.cli.inference import _MAX_PIXELS

    assert _MAX_PIXELS == MAX_PIXELS
    image = tmp_path / "wide.png"
    Image.new("L", (300, 200)).save(image)
    assert check_images([image], max_pixels=60_000) == [image]
    with pytest.raises(ValueError, match=r"wide\.png has 300×200 = 60000 pixels, more than --max-pixels 59999"):
        check_images([image], max_pixels=59_999)
    with pytest.raises(ValueError, match="--max-pixels must be a positive number of pixels, got 0"):
        check_images([image], max_pixels=0)
