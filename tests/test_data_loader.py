"""Loading packed splits: alignment under augmentation, determinism, DDP sharding, validation batches, bench-data."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import yaml

from segmodels.cli import main
from segmodels.data.augment import AugmentParams, augment_batch, sample_params
from segmodels.data.labels import IGNORE_INDEX
from segmodels.data.loader import MEAN, STD, PackedSplit, TrainLoader, normalize, val_batches

N, H, W, BLOCK = 6, 40, 64, 8


def _colour_of(labels: np.ndarray) -> np.ndarray:
    """An image whose colour encodes the label: R = 12·label, G = 255 − 12·label (ignore: R = 250)."""
    r = np.where(labels == IGNORE_INDEX, 250, labels.astype(np.int64) * 12)
    return np.stack([r, 255 - r, np.full_like(r, 128)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 19, size=(N, H // BLOCK, W // BLOCK))
    blocks[rng.random(blocks.shape) < 0.1] = IGNORE_INDEX
    labels = blocks.repeat(BLOCK, 1).repeat(BLOCK, 2).astype(np.uint8)
    (root / "train").mkdir()
    np.save(root / "train" / "images.npy", _colour_of(labels))
    np.save(root / "train" / "labels.npy", labels)
    names = [f"town_{i:06d}_000019" for i in range(N)]
    (root / "manifest.json").write_text(json.dumps({"splits": {"train": {"names": names}}}))
    return PackedSplit(root / "train")


def _assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 0) -> None:
    assert a.shape == b.shape and (a - b).abs().max().item() <= atol, (a - b).abs().max().item()


def _unnormalise(x: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def test_packed_split(split, tmp_path):
    assert len(split) == N and split.size == (H, W) and split.names[2] == "town_000002_000019"
    assert isinstance(split.images, np.memmap)
    clone = pickle.loads(pickle.dumps(split))  # reopened by path, not copied
    assert len(pickle.dumps(split)) < 1000 and clone.names == split.names
    np.testing.assert_array_equal(clone.labels[3], split.labels[3])
    with pytest.raises(FileNotFoundError, match="run `segmodels prepare`"):
        PackedSplit(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "images.npy", np.zeros((2, 4, 4, 3), np.uint8))
    np.save(tmp_path / "bad" / "labels.npy", np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="labels.npy: expected uint8"):
        PackedSplit(tmp_path / "bad")


def test_normalize():
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    x = normalize(images)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and x.is_contiguous()
    want = (images[1, 3, 4, 2].item() / 255 - MEAN[2]) / STD[2]
    assert abs(x[1, 2, 3, 4].item() - want) < 1e-6
    assert normalize(images[0]).shape == (1, 3, 5, 7)


def _params(n=1, scale=1.0, origin=(0.0, 0.0), flip=False) -> AugmentParams:
    def full(v):
        return np.full(n, float(v))

    return AugmentParams(scale=full(scale), origin=np.array([origin] * n), flip=np.full(n, flip),
                         brightness=full(0), contrast=full(1), saturation=full(1), hue=full(0))  # fmt: skip


def _augment(split, params, crop):
    images = torch.from_numpy(np.array(split.images[:1]))
    labels = torch.from_numpy(np.array(split.labels[:1]))
    x, y = augment_batch(images, labels, params, crop, MEAN, STD)
    return images, labels, x, y


def test_affine_map_is_exact_for_crops_flips_and_scales(split):
    images, labels, x, y = _augment(split, _params(), (H, W))  # identity
    _assert_close(x, normalize(images), atol=1e-4, rtol=0)
    assert torch.equal(y, labels.long())
    _, _, x, y = _augment(split, _params(origin=(3.0, 5.0), flip=True), (24, 40))  # crop, then mirror
    assert torch.equal(y, labels[:, 3:27, 5:45].flip(-1).long())
    _assert_close(x, normalize(images[:, 3:27, 5:45].flip(2)), atol=1e-4, rtol=0)
    _, _, _, y = _augment(split, _params(scale=2.0, origin=(4.0, 6.0)), (32, 32))  # 2× up: each pixel twice
    want = labels[0].repeat_interleave(2, 0).repeat_interleave(2, 1)[4:36, 6:38]
    assert torch.equal(y[0], want.long())
    _, _, x, y = _augment(split, _params(scale=0.5, origin=(-4.0, -8.0)), (32, 48))  # smaller than the crop
    assert (y[0, :4] == IGNORE_INDEX).all() and (y[0, :, :8] == IGNORE_INDEX).all()
    assert (x[0, :, :4] == 0).all() and (x[0, :, 4 + H // 2 :] == 0).all()  # padded with the mean colour
    assert torch.equal(y[0, 4 : 4 + H // 2, 8 : 8 + W // 2], labels[0, ::2, ::2].long())


def test_images_and_labels_stay_aligned_under_random_transforms(split):
    loader = TrainLoader(split, batch_size=3, crop_size=(32, 32), photometric=False, seed=5)
    checked = padded = flipped = 0
    for step in range(12):
        x, y = loader.batch(step)
        rgb, lab = _unnormalise(x), y.numpy()
        pad = (x == 0).all(1).numpy()
        assert (lab[pad] == IGNORE_INDEX).all()  # padding is always ignored
        padded += pad.sum()
        # pixels whose 3×3 neighbourhood has one label: bilinear sampling saw only that label's colour
        padded_lab = np.pad(lab, ((0, 0), (1, 1), (1, 1)), constant_values=IGNORE_INDEX)
        same = np.ones_like(lab, bool)
        for dy in range(3):
            for dx in range(3):
                same &= padded_lab[:, dy : dy + lab.shape[1], dx : dx + lab.shape[2]] == lab
        inner = same & (lab != IGNORE_INDEX)
        np.testing.assert_allclose(rgb[..., 0][inner], 12.0 * lab[inner], atol=0.5)
        np.testing.assert_allclose(rgb[..., 1][inner], 255 - 12.0 * lab[inner], atol=0.5)
        checked += inner.sum()
        params = sample_params(torch.Generator().manual_seed(step), 3, (H, W), (32, 32))
        flipped += int(params.flip.sum())
    assert checked > 5000 and padded > 0 and flipped > 0


def test_photometric_changes_colours_not_geometry(split):
    plain = TrainLoader(split, batch_size=4, crop_size=(32, 32), photometric=False, seed=1)
    jitter = TrainLoader(split, batch_size=4, crop_size=(32, 32), photometric=True, seed=1)
    (x0, y0), (x1, y1) = plain.batch(3), jitter.batch(3)
    assert torch.equal(y0, y1)
    assert not torch.allclose(x0, x1)
    assert (x1[(y1 == IGNORE_INDEX).unsqueeze(1).expand_as(x1) & (x0 == 0)] == 0).all()  # padding stays mean


def test_deterministic_in_seed_step_and_rank(split):
    def make(**kw):
        return TrainLoader(split, batch_size=2, crop_size=(24, 24), **kw)

    a, b = make(seed=3), make(seed=3)
    for step in (0, 7):
        xa, ya = a.batch(step)
        xb, yb = b.batch(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    assert not torch.equal(a.batch(0)[0], make(seed=4).batch(0)[0])
    it = make(seed=3).iterate(start_step=5, workers=2)  # a resumed run continues with the same batches
    for step in range(5, 5 + 20):  # across chunks of several steps and both worker threads
        x, y = next(it)
        _assert_close(x, a.batch(step)[0], atol=1e-5)  # made with another thread count: equal up to rounding
        assert torch.equal(y, a.batch(step)[1])
    it.close()
    x, _ = make(seed=3, channels_last=True).batch(0)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x.shape == (2, 3, 24, 24) and x.dtype == torch.float32


def test_ddp_ranks_get_disjoint_shards(split):
    ranks = [TrainLoader(split, batch_size=1, crop_size=(16, 16), rank=r, world_size=2, seed=9) for r in (0, 1)]
    assert ranks[0].steps_per_epoch == N // 2
    for epoch in range(2):
        steps = range(epoch * 3, epoch * 3 + 3)
        seen = [np.concatenate([loader.indices(s) for s in steps]) for loader in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(np.concatenate(seen)) == list(range(N))  # together, each image once per epoch
    assert not torch.equal(ranks[0].batch(0)[1], ranks[1].batch(0)[1])
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        TrainLoader(split, batch_size=1, crop_size=(16, 16), rank=2, world_size=2)


def test_val_batches_cover_the_split_once_across_ranks(split):
    seen = []
    for rank in (0, 1):
        for x, y, idx in val_batches(split, batch_size=2, device="cpu", rank=rank, world_size=2):
            assert x.shape[1:] == (3, H, W) and y.dtype == torch.int64
            _assert_close(x, normalize(torch.from_numpy(np.array(split.images[idx.numpy()]))))
            assert torch.equal(y, torch.from_numpy(np.array(split.labels[idx.numpy()])).long())
            seen += idx.tolist()
    assert sorted(seen) == list(range(N))


def test_iterate_raises_errors_of_the_prefetch_thread(split):
    loader = TrainLoader(split, batch_size=2, crop_size=(16, 16))

    def broken(steps: list[int]):
        raise RuntimeError(f"cannot read steps from {steps[0]}")

    loader._host = broken  # any failure while preparing a batch must reach the caller
    with pytest.raises(RuntimeError, match="cannot read steps from 3"):
        next(loader.iterate(3, workers=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_batches_match_cpu_batches(split):
    kw = {"batch_size": 2, "crop_size": (24, 24), "seed": 2}
    x_cpu, y_cpu = TrainLoader(split, device="cpu", **kw).batch(4)
    x_gpu, y_gpu = TrainLoader(split, device="cuda", **kw).batch(4)
    assert x_gpu.is_cuda and torch.equal(y_gpu.cpu(), y_cpu)
    _assert_close(x_gpu.cpu(), x_cpu, atol=1e-3, rtol=0)


def test_bench_data_command(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"size": [32, 64], "synthetic": {"train": 4, "val": 1, "size": [48, 96]}},
        "train": {"batch_size": 2, "crop_size": [24, 24]},
    }))  # fmt: skip
    out = tmp_path / "bench.json"
    args = ["bench-data", "--config", str(config), "--work", str(tmp_path / "work"), "--batches", "2", "--seconds", "0"]
    assert main([*args, "--workers", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["batch_shape"] == [2, 3, 24, 24]
    assert result["ours_samples_per_s"] > 0 and result["plain_samples_per_s"] > 0
    assert result["ours_cpu_ms_per_sample"] > 0 and result["plain_cpu_ms_per_sample"] > 0
    assert result["speedup"] == pytest.approx(result["ours_samples_per_s"] / result["plain_samples_per_s"], rel=0.02)
    assert result["generate_and_pack"]["images"] == 5
    assert "ratio" in capsys.readouterr().out


def _reference_colour(rgb: np.ndarray, p: AugmentParams) -> np.ndarray:
    """The photometric distortion written out step by step (0-255 RGB in, normalised CHW out)."""
    x = rgb.astype(np.float64) + p.brightness[0]
    grey = (x @ np.array([0.299, 0.587, 0.114])).mean()
    x = (x - grey) * p.contrast[0] + grey
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = x @ to_yiq.T
    c, s = np.cos(p.hue[0]), np.sin(p.hue[0])
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1] = p.saturation[0] * (c * i - s * q)
    yiq[..., 2] = p.saturation[0] * (s * i + c * q)
    x = np.clip(yiq @ np.linalg.inv(to_yiq).T, 0, 255)
    return ((x / 255 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("brightness", "contrast", "saturation", "hue"),
    [(20.0, 1.0, 1.0, 0.0), (0.0, 1.4, 1.0, 0.0), (0.0, 1.0, 0.5, 0.0), (0.0, 1.0, 1.0, 0.3), (-30.0, 0.6, 1.3, -0.2)],
)
def test_folded_colour_map_matches_the_step_by_step_distortion(brightness, contrast, saturation, hue):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    p = _params()
    p.brightness[:], p.contrast[:], p.saturation[:], p.hue[:] = brightness, contrast, saturation, hue
    x, _ = augment_batch(torch.from_numpy(image), torch.zeros(1, 16, 24, dtype=torch.uint8), p, (16, 24), MEAN, STD)
    np.testing.assert_allclose(x[0].numpy(), _reference_colour(image[0], p), atol=2e-4)


def test_prefetch_threads_leave_the_callers_thread_count_alone(split):
    before = torch.get_num_threads()
    it = TrainLoader(split, batch_size=2, crop_size=(16, 16)).iterate(0, workers=2)
    next(it)
    assert torch.get_num_threads() == before
    it.close()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("scale_range", [(0.5, 2.0), (1.5, 2.0), (0.3, 0.6)])
def test_reading_only_the_crop_windows_gives_the_whole_image_batch(tmp_path, scale_range):
    """The loader copies only the pixels each crop reads; the batch equals the one made from whole images."""
    rng = np.random.default_rng(1)
    (tmp_path / "train").mkdir()
    images = rng.integers(0, 256, size=(5, 37, 53, 3), dtype=np.uint8)  # noise: any shift of a tap shows
    labels = rng.integers(0, 19, size=(5, 37, 53), dtype=np.uint8)
    np.save(tmp_path / "train" / "images.npy", images)
    np.save(tmp_path / "train" / "labels.npy", labels)
    loader = TrainLoader(tmp_path / "train", batch_size=5, crop_size=(24, 32), scale_range=scale_range, seed=2)
    read = whole = 0
    for step in range(6):
        idx = loader.indices(step)
        _, _, params, windows = loader._host([step])
        x_ref, y_ref = augment_batch(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), params,
                                     (24, 32), MEAN, STD)  # fmt: skip
        x, y = loader.batch(step)
        _assert_close(x, x_ref, atol=1e-4)
        assert torch.equal(y, y_ref)
        read += int(((windows[:, 1] - windows[:, 0]) * (windows[:, 3] - windows[:, 2])).sum())
        whole += 5 * 37 * 53
    if scale_range[0] >= 1.5:  # upscaled crops read a fraction of the image
        assert read < 0.6 * whole, (read, whole)
