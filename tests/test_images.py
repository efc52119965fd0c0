"""Decoding users' images to 8-bit RGB (16-bit, float, refused modes) and `segmodels predict` on folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segmodels.cli import main
from segmodels.data.images import read_rgb8, to_rgb8
from segmodels.data.loader import normalize
from segmodels.engine.checkpoint import save_atomic
from segmodels.engine.predict import check_images
from segmodels.models import build_model
from segmodels.study.config import StudyConfig, config_to_dict


def _gray16(path, values):
    Image.fromarray(np.asarray(values, np.uint16)).save(path)
    return path


def _gradient16(width=256, height=4):
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


def _rgb8(path, size=(12, 8), seed=0):
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def test_16bit_png_scales_by_the_full_range(tmp_path):
    gradient = _gradient16()
    rgb = read_rgb8(_gray16(tmp_path / "depth.png", gradient))
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    assert (rgb == rgb[:, :, :1]).all()
    row = rgb[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()
    assert 120 <= row[128] <= 136 and (rgb < 255).mean() > 0.9
    np.testing.assert_array_equal(row, np.rint(gradient[0] / 65535 * 255))
    # A dim image of the same series stays dim: the type's range is used, not the image's min/max.
    dim = read_rgb8(_gray16(tmp_path / "dim.png", gradient // 64))
    assert dim.max() == round(65535 // 64 * 255 / 65535)


def test_float_images_in_0_1_map_to_0_255(tmp_path):
    values = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    path = tmp_path / "prob.tif"
    Image.fromarray(values, mode="F").save(path)
    rgb = read_rgb8(path)
    np.testing.assert_array_equal(rgb[:, :, 2], np.rint(values.astype(np.float64) * 255).astype(np.uint8))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def test_out_of_range_images_are_refused_naming_file_mode_and_range(tmp_path):
    path = tmp_path / "radiance.tif"
    Image.fromarray(np.full((3, 3), 2.5, np.float32), mode="F").save(path)
    with pytest.raises(ValueError, match=r"radiance\.tif.*mode F.*2\.5"):
        read_rgb8(path)
    path = tmp_path / "counts.tif"
    Image.fromarray(np.array([[0, 70000]], np.int32), mode="I").save(path)
    with pytest.raises(ValueError, match=r"counts\.tif.*mode I\b.*70000"):
        read_rgb8(path)
    with pytest.raises(ValueError, match=r"lab\.tif.*mode LAB"):
        to_rgb8(Image.new("LAB", (2, 2)), tmp_path / "lab.tif")


def test_8bit_rgb_decodes_unchanged(tmp_path):
    array = _rgb8(tmp_path / "street.png")
    np.testing.assert_array_equal(read_rgb8(tmp_path / "street.png"), array)


def test_check_images_expands_folders(tmp_path):
    folder = tmp_path / "shots"
    (folder / "nested").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "c.tif", "nested/d.png"):
        _rgb8(folder / name)
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "z.bmp"
    _rgb8(single)
    assert check_images([folder]) == [folder / "a.JPG", folder / "b.png", folder / "c.tif"]
    assert check_images([single, folder])[0] == single
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("")
    with pytest.raises(ValueError, match=r"no images in .*empty"):
        check_images([folder, empty])
    with pytest.raises(ValueError, match="same output files"):
        check_images([folder, folder / "b.png"])


def test_check_images_refuses_before_loading_the_model(tmp_path, capsys):
    bad = tmp_path / "bright.tif"
    Image.fromarray(np.full((2, 2), 3.0, np.float32), mode="F").save(bad)
    code = main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "bright.tif" in err and "mode F" in err and "missing.pt" not in err


@pytest.mark.usefixtures("one_thread")
def test_predict_cli_on_a_16bit_png_and_a_folder(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("resnet18", "fcn", num_classes=19, pretrained=None).eval()
    ckpt = tmp_path / "checkpoint.pt"
    save_atomic({"format": 1, "model": model.state_dict(), "backbone": "resnet18", "head": "fcn",
                 "num_classes": 19, "output_stride": 8, "aux": True,
                 "config": config_to_dict(StudyConfig()), "iteration": 3}, ckpt)  # fmt: skip
    gradient = _gradient16(width=40, height=24)
    depth = _gray16(tmp_path / "depth.png", gradient)
    folder = tmp_path / "shots"
    folder.mkdir()
    _rgb8(folder / "street.jpg")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(ckpt), str(depth), str(folder), "--out", str(out), "--device", "cpu",
            "--no-amp"]  # fp32 on every CPU: the mask is compared with the fp32 model's below
    assert main(args) == 0
    assert "2 image(s)" in capsys.readouterr().out
    assert (out / "street_color.png").is_file()
    expected = np.repeat(np.rint(gradient / 65535 * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    overlay = np.asarray(Image.open(out / "depth_overlay.png")).astype(np.float32)
    color = np.asarray(Image.open(out / "depth_color.png")).astype(np.float32)
    np.testing.assert_allclose(overlay, np.round(expected * 0.5 + color * 0.5), atol=1)
    with torch.inference_mode():
        mask = model(normalize(torch.from_numpy(expected)))["out"].argmax(1)[0].numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "depth_trainid.png")), mask)
