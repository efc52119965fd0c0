"""The corruption registry, its equality to the imagecorruptions package's definitions, and the corrupted-image cache.

The reference for every corruption and severity is the package's own function, run as its ``corrupt()`` runs it
(``np.random.seed(seed)``, then ``np.uint8(fn(PIL image, severity))``). The four that no longer run under numpy 2 /
current scikit-image are run with a compatibility shim applied only here: ``np.float_`` as float64, ``gaussian``
accepting ``multichannel=True`` as ``channel_axis=-1``, and ``random_noise`` given the generator the port documents
(one ``np.random.randint(2**32)`` draw from the seeded global RNG).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmodels.data import corruption_ports, corruptions
from segmodels.data.corrupted import cache_folder, open_corrupted, write_corrupted
from segmodels.data.corruptions import (
    CORRUPTIONS,
    GROUPS,
    corrupt,
    corrupt_images,
    corruption_names,
    image_seed,
    register_corruption,
    require_corruptions,
    resolve_corruptions,
)

EXPECTED = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "brightness", "spatter"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"),
}
PORTED = {"impulse_noise", "glass_blur", "gaussian_blur", "fog"}
RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "spatter", "elastic_transform"]  # fmt: skip


def make_image(h: int, w: int) -> np.ndarray:
    """Smooth gradients, a hard-edged checker band and a bright disk: blurs, noise and colour changes all show."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = xx * 255 // max(w - 1, 1)
    g = yy * 255 // max(h - 1, 1)
    b = np.where((xx // 6 + yy // 5) % 2 == 0, 40, 210)
    img = np.stack([r, g, b], axis=-1)
    img[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (h // 5) ** 2] = (250, 250, 240)
    return img.astype(np.uint8)


IMAGES = {"48x64": make_image(48, 64), "32x40": make_image(32, 40)}


# --- (a) the registry ------------------------------------------------------------------------------------------


def test_registry_holds_the_19_in_their_groups():
    assert GROUPS == EXPECTED
    assert corruption_names() == [c for group in EXPECTED.values() for c in group]
    for name, spec in CORRUPTIONS.items():
        assert spec.name == name and spec.label and spec.group in EXPECTED
        assert spec.ported == (name in PORTED)
    # each group: its ImageNet-C corruptions, then its extra one (the package's validation set)
    assert [group[-1] for group in GROUPS.values()] == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]


def test_resolve_corruptions():
    assert resolve_corruptions(["all"]) == corruption_names()
    assert resolve_corruptions(["fog", "noise", "gaussian_noise"]) == [*EXPECTED["noise"], "fog"]
    assert resolve_corruptions(["digital", "blur"]) == [*EXPECTED["blur"], *EXPECTED["digital"]]
    with pytest.raises(ValueError, match=r"'robustness\.corruptions' names 'fgo'.*noise, blur, weather.*glass_blur"):
        resolve_corruptions(["noise", "fgo"])
    with pytest.raises(ValueError, match=r"'x\.y' names 'Noise'"):
        resolve_corruptions(["Noise"], key="x.y")


def test_register_corruption(monkeypatch):
    monkeypatch.setattr(corruptions, "CORRUPTIONS", dict(CORRUPTIONS))
    monkeypatch.setattr(corruptions, "GROUPS", dict(GROUPS))

    @register_corruption("invert", "digital", "Inversion")
    def invert(x, severity=1):
        return 255 - np.array(x) * (severity / 5)

    spec = corruptions.CORRUPTIONS["invert"]
    assert spec.ported and spec.group == "digital" and corruptions.GROUPS["digital"][-1] == "invert"
    assert corruptions.resolve_corruptions(["digital"])[-1] == "invert"
    img = IMAGES["32x40"]
    assert np.array_equal(corrupt(img, "invert", 5, seed=0), 255 - img)
    for name, group in (("fog", "weather"), ("noise", "blur"), ("all", "x"), ("Bad-Name", "x"), ("ok", "fog")):
        with pytest.raises(ValueError, match="corruption (name|group)"):
            register_corruption(name, group, "Label")(invert)


def test_require_corruptions(monkeypatch):
    require_corruptions(["all"])  # everything is installed here
    real = corruptions.importlib.util.find_spec
    monkeypatch.setattr(corruptions.importlib.util, "find_spec", lambda m: None if m == "cv2" else real(m))
    require_corruptions(["fog", "glass_blur"])  # the ports need no OpenCV
    with pytest.raises(ImportError, match=r"cv2 \(for snow, frost\).*pip install 'segmodels\[robustness\]'"):
        require_corruptions(["snow", "fog", "frost"])


def test_bad_arguments_are_named():
    img = IMAGES["32x40"]
    with pytest.raises(ValueError, match="severity must be an integer 1-5, got 6"):
        corrupt(img, "fog", 6, seed=0)
    with pytest.raises(ValueError, match="severity must be an integer 1-5, got 0"):
        corrupt(img, "fog", 0, seed=0)
    with pytest.raises(ValueError, match=r"expected a uint8 array \(H, W, 3\), got float64"):
        corrupt(img.astype(float), "fog", 1, seed=0)
    with pytest.raises(ValueError, match=r"got uint8 \(32, 40\)"):
        corrupt(img[..., 0], "fog", 1, seed=0)
    with pytest.raises(ValueError, match="at least 32 pixels"):
        corrupt(img[:31], "fog", 1, seed=0)
    with pytest.raises(ValueError, match="unknown corruption 'smog'"):
        corrupt(img, "smog", 1, seed=0)
    with pytest.raises(ValueError, match="seed must be an integer in"):
        corrupt(img, "fog", 1, seed=2**32)


# --- (b) determinism -------------------------------------------------------------------------------------------


def _same_state(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.parametrize("name", corruption_names())
def test_deterministic_and_global_rng_untouched(name):
    img = IMAGES["48x64"]
    np.random.seed(123)
    np.random.random(7)
    before = np.random.get_state()
    first = corrupt(img, name, 3, seed=11)
    assert _same_state(np.random.get_state(), before)
    assert first.dtype == np.uint8 and first.shape == img.shape
    assert np.array_equal(first, corrupt(img, name, 3, seed=11))
    if name in RANDOM:
        assert not np.array_equal(first, corrupt(img, name, 3, seed=12))
    assert _same_state(np.random.get_state(), before)


def test_image_seed_is_stable():
    assert image_seed("frankfurt_000000_000294", "fog", 3) == image_seed("frankfurt_000000_000294", "fog", 3)
    seeds = {image_seed(i, c, k) for i in ("a", "b") for c in ("fog", "snow") for k in (1, 2)}
    assert len(seeds) == 8 and all(0 <= s < 2**32 for s in seeds)
    assert image_seed("a", "fog", 1) == 3980012733  # sha256 of "a\0fog\01", not hash(): the same everywhere


# --- (c) equality to the package's definitions ---------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """``reference(name, image, severity, seed)``: the package's function run as its corrupt() runs it, with the
    compatibility shim (only while it runs) for the four that fail under numpy 2 / current scikit-image."""
    import skimage.filters
    import skimage.util

    package = corruption_ports.package_module()
    gaussian, random_noise = skimage.filters.gaussian, skimage.util.random_noise

    def old_gaussian(image, *args, multichannel=None, **kw):
        if multichannel:
            kw["channel_axis"] = -1
        return gaussian(image, *args, **kw)

    def seeded_random_noise(image, mode="gaussian", **kw):
        return random_noise(image, mode=mode, rng=np.random.default_rng(np.random.randint(2**32)), **kw)

    def run(name, image, severity, seed):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(np, "float_", np.float64, raising=False)
            mp.setattr(package, "gaussian", old_gaussian)
            mp.setattr(package.sk.util, "random_noise", seeded_random_noise)
            np.random.seed(seed)
            return np.uint8(getattr(package, name)(Image.fromarray(image), severity))

    return run


@pytest.mark.parametrize("size", list(IMAGES))
@pytest.mark.parametrize("name", corruption_names())
def test_equal_to_the_package(name, size, reference):
    img = IMAGES[size]
    for severity in range(1, 6):
        seed = image_seed(size, name, severity)
        ours = corrupt(img, name, severity, seed=seed)
        want = reference(name, img, severity, seed)
        assert np.array_equal(ours, want), f"{name} severity {severity} on {size}: {np.sum(ours != want)} differ"
        if name not in ("jpeg_compression", "pixelate", "contrast", "brightness", "saturate"):
            assert not np.array_equal(ours, img)  # a corruption that does nothing would pass the equality, too


def test_glass_blur_equals_the_loop_on_a_larger_image(reference):
    """Longer copy chains than the small images give (pointer jumping over several rounds)."""
    img = make_image(96, 160)
    for severity in (2, 4, 5):
        assert np.array_equal(corrupt(img, "glass_blur", severity, seed=5), reference("glass_blur", img, severity, 5))


def test_one_draw_equals_many():
    """The glass blur port's premise: N draws of size (2,) equal one of size (N, 2) on the legacy RandomState."""
    for delta in (1, 2, 3, 4):
        np.random.seed(delta)
        many = np.array([np.random.randint(-delta, delta, size=(2,)) for _ in range(999)])
        np.random.seed(delta)
        assert np.array_equal(many, np.random.randint(-delta, delta, size=(999, 2)))


# --- (d) many images -------------------------------------------------------------------------------------------


def test_corrupt_images_in_processes_equals_in_process():
    images = np.stack([make_image(32, 40), make_image(32, 40)[::-1], make_image(32, 40)[:, ::-1]])
    ids = ["img_a", "img_b", "img_c"]
    for name in ("glass_blur", "gaussian_noise"):
        one = corrupt_images(images, ids, name, 2, workers=1)
        assert np.array_equal(one, corrupt_images(images, ids, name, 2, workers=2))
        for i, image_id in enumerate(ids):
            assert np.array_equal(one[i], corrupt(images[i], name, 2, seed=image_seed(image_id, name, 2)))
    with pytest.raises(ValueError, match="2 image ids for 3 images"):
        corrupt_images(images, ids[:2], "fog", 1)


# --- (e) the cache ---------------------------------------------------------------------------------------------


def write_split(root: Path, n: int = 4, size: tuple[int, int] = (32, 40), prefix: str = "val") -> Path:
    """A packed dataset with a ``val`` split of ``n`` images, written by hand; returns the split's folder."""
    images = np.stack([np.roll(make_image(*size), 3 * i, axis=1) for i in range(n)])
    (root / "val").mkdir(parents=True, exist_ok=True)
    np.save(root / "val" / "images.npy", images)
    np.save(root / "val" / "labels.npy", np.zeros(images.shape[:3], np.uint8))
    names = [f"{prefix}_{i:03d}" for i in range(n)]
    manifest = {"format": 1, "size": list(size), "classes": ["a", "b"], "ignore_index": 255,
                "splits": {"val": {"count": n, "names": names}}}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root / "val"


def test_cache_round_trip_and_resume(tmp_path):
    from segmodels.data.loader import PackedSplit
    from segmodels.data.pack import data_identity

    split_dir = write_split(tmp_path / "packed" / "tiny")
    folder = cache_folder("tiny", "glass_blur", root=tmp_path / "corrupted")
    assert folder == tmp_path / "corrupted" / "tiny" / "glass_blur"
    record = write_corrupted(split_dir, folder, "glass_blur", [3, 1], images=3, progress=False)
    split = PackedSplit(split_dir)
    for k in (1, 3):
        want = corrupt_images(np.asarray(split.images[:3]), split.names[:3], "glass_blur", k)
        assert np.array_equal(open_corrupted(folder, k, split), want)
    on_disk = json.loads((folder / "corrupted.json").read_text())
    assert on_disk == record
    assert record["severities"] == [1, 3] and record["count"] == 3 and record["names"] == split.names[:3]
    assert record["group"] == "blur" and record["ported"] is True and record["split"] == "val"
    assert record["data_identity"] == data_identity(split_dir.parent) and record["size"] == [32, 40]
    assert record["imagecorruptions"] == "1.1.2" and set(record["seconds_per_image"]) == {"1", "3"}
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="lists severities \\[1, 3\\], not 2"):
        open_corrupted(folder, 2, split)

    # a second run keeps what is made and adds what is missing
    stamps = {k: os.stat(folder / f"s{k}.npy").st_ino for k in (1, 3)}
    record = write_corrupted(split_dir, folder, "glass_blur", [1, 2, 3], images=3, progress=False)
    assert record["severities"] == [1, 2, 3]
    assert {k: os.stat(folder / f"s{k}.npy").st_ino for k in (1, 3)} == stamps
    want = corrupt_images(np.asarray(split.images[:3]), split.names[:3], "glass_blur", 2)
    assert np.array_equal(open_corrupted(folder, 2, split), want)

    # an array the record lists but that is gone (or cut short) is made again
    (folder / "s2.npy").unlink()
    np.save(folder / "s3.npy", np.zeros((2, 32, 40, 3), np.uint8))
    assert write_corrupted(split_dir, folder, "glass_blur", [2, 3], images=3, progress=False)["severities"] == [1, 2, 3]
    assert np.array_equal(open_corrupted(folder, 2, split), want)
    assert open_corrupted(folder, 3, split).shape == (3, 32, 40, 3)


def test_cache_refuses_other_data(tmp_path):
    from segmodels.data.loader import PackedSplit

    split_dir = write_split(tmp_path / "tiny")
    folder = tmp_path / "corrupted" / "tiny" / "fog"
    write_corrupted(split_dir, folder, "fog", [1], progress=False)
    marker = folder / "corrupted.json"
    write_split(tmp_path / "tiny", prefix="other")  # packed again from other images: another data identity
    with pytest.raises(ValueError, match=f"{marker} was made from other packed data.*segmodels corrupt --config "
                                         "CONFIG --corruption fog"):  # fmt: skip
        open_corrupted(folder, 1, PackedSplit(split_dir))
    write_split(tmp_path / "tiny", n=5)  # one more image: the identity differs as well
    with pytest.raises(ValueError, match="other packed data"):
        open_corrupted(folder, 1, PackedSplit(split_dir))
    # the same data, but the array replaced by one of another size
    write_split(tmp_path / "tiny")
    np.save(folder / "s1.npy", np.zeros((4, 32, 41, 3), np.uint8))
    with pytest.raises(ValueError, match=r"s1\.npy: expected uint8 \(4, 32, 40, 3\).*--corruption fog"):
        open_corrupted(folder, 1, PackedSplit(split_dir))
    marker.unlink()
    with pytest.raises(FileNotFoundError, match=f"{marker} not found.*--corruption fog"):
        open_corrupted(folder, 1, PackedSplit(split_dir))
    with pytest.raises(ValueError, match=f"images: 5 is more than the 4 images of split {split_dir}"):
        write_corrupted(split_dir, folder, "fog", [1], images=5, progress=False)


def test_cache_recovers_from_an_interrupted_write(tmp_path, monkeypatch):
    from segmodels.data.loader import PackedSplit

    split_dir = write_split(tmp_path / "tiny", n=3)
    split = PackedSplit(split_dir)
    folder = tmp_path / "c" / "gaussian_noise"
    write_corrupted(split_dir, folder, "gaussian_noise", [1], progress=False)

    # killed while writing severity 2: the exception path removes its temporary; the record still lists only 1
    calls = []

    def dies(*args, out, **kw):
        out[0] = 7
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(corruptions, "corrupt_images", dies)
    with pytest.raises(KeyboardInterrupt):
        write_corrupted(split_dir, folder, "gaussian_noise", [1, 2], progress=False)
    monkeypatch.undo()
    assert calls and sorted(p.name for p in folder.iterdir()) == ["corrupted.json", "s1.npy"]
    # a SIGKILL leaves its temporary behind, and a half-made array with no record (corrupted.json lost)
    (folder / ".s2.npy.dead.tmp").write_bytes(b"half")
    np.save(folder / "s2.npy", np.zeros((3, 32, 40, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="not 2"):
        open_corrupted(folder, 2, split)
    write_corrupted(split_dir, folder, "gaussian_noise", [1, 2], progress=False)
    assert not list(folder.glob("*.tmp"))
    for k in (1, 2):
        want = corrupt_images(np.asarray(split.images), split.names, "gaussian_noise", k)
        assert np.array_equal(open_corrupted(folder, k, split), want)

    (folder / "corrupted.json").unlink()  # the record lost after the arrays: they are made again, not trusted
    np.save(folder / "s1.npy", np.zeros((3, 32, 40, 3), np.uint8))
    write_corrupted(split_dir, folder, "gaussian_noise", [1], progress=False)
    assert not (folder / "s2.npy").exists()  # arrays no record vouches for are removed
    want = corrupt_images(np.asarray(split.images), split.names, "gaussian_noise", 1)
    assert np.array_equal(open_corrupted(folder, 1, split), want)
