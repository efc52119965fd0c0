"""Seconds per image of every registered corruption (:mod:`segmodels.data.corruptions`):
``python benchmarks/bench_corruptions.py [--size 1024 2048 --severity 3 --repeats 3 --only blur --skip-reference]``.

One generated image of ``--size`` (smooth gradients, hard edges, fine texture) is corrupted ``--repeats`` times per
corruption after a first call that is timed apart (imports, OpenCV's first use, reading frost's images). Prints the
first call, the median and the p90 of the rest, on one CPU core's worth of work (``corrupt`` is single-process; a
cache of many images runs in ``--workers`` processes), with the CPU and library versions.

Glass blur is also run as the imagecorruptions package defines it (its pure-Python pixel loop, with scikit-image's
``multichannel=`` argument mapped to ``channel_axis=-1``), once, in the same run: the table gives its time, the
port's speed-up and whether both give the same pixels. ``--skip-reference`` leaves it out (about a minute at
1024×2048).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import time

import numpy as np

from segmodels.data import corruption_ports, corruptions
from segmodels.data.corruptions import CORRUPTIONS, corrupt, image_seed, resolve_corruptions
from segmodels.devices import cpu_name


def bench_image(h: int, w: int) -> np.ndarray:
    """Gradients, a checker band, a bright disk and seeded texture: the content a street scene's blurs and JPEG see."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1),
                    np.where((xx // 24 + yy // 16) % 2 == 0, 60.0, 200.0)], axis=-1)  # fmt: skip
    img[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 5) ** 2] = (250, 250, 240)
    img += np.random.default_rng(0).normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _p90(times: list[float]) -> float:
    return float(np.percentile(times, 90))


def reference_glass_blur(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """The package's glass_blur, its loop and all, with the removed ``multichannel=True`` given as channel_axis."""
    from PIL import Image
    from skimage.filters import gaussian

    package = corruption_ports.package_module()

    def old_gaussian(x, *args, multichannel=None, **kw):
        return gaussian(x, *args, **kw, **({"channel_axis": -1} if multichannel else {}))

    saved = package.gaussian
    package.gaussian = old_gaussian
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.uint8(package.glass_blur(Image.fromarray(image), severity))
    finally:
        package.gaussian = saved
        np.random.set_state(state)


def _versions() -> str:
    names = ("numpy", "scikit-image", "scipy", "opencv-python", "pillow", "imagecorruptions")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"), help="image size")
    p.add_argument("--severity", type=int, default=3, choices=range(1, 6), help="severity (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the first (default 3)")
    p.add_argument("--only", nargs="+", default=["all"], metavar="NAME", help="corruptions or groups (default all)")
    p.add_argument("--skip-reference", action="store_true", help="do not time the package's own glass blur loop")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    names = resolve_corruptions(args.only, key="--only")
    corruptions.require_corruptions(names)
    h, w = args.size
    image = bench_image(h, w)
    k = args.severity
    print(f"# {h}x{w}, severity {k}, {args.repeats} timed calls after the first; {cpu_name()}, "
          f"{len(os.sched_getaffinity(0))} cores usable, Python {platform.python_version()}; {_versions()}")  # fmt: skip
    print(f"{'corruption':<18} {'group':<8} {'ported':<6} {'first s':>8} {'median s':>9} {'p90 s':>8}")
    medians = {}
    for name in names:
        spec = CORRUPTIONS[name]
        seed = image_seed("bench", name, k)
        first = _seconds(lambda n=name, s=seed: corrupt(image, n, k, seed=s))
        times = [_seconds(lambda n=name, s=seed: corrupt(image, n, k, seed=s)) for _ in range(args.repeats)]
        medians[name] = statistics.median(times)
        print(f"{name:<18} {spec.group:<8} {'yes' if spec.ported else 'no':<6} {first:8.3f} {medians[name]:9.3f} "
              f"{_p90(times):8.3f}", flush=True)  # fmt: skip
    print(f"{'total':<18} {'':<8} {'':<6} {'':>8} {sum(medians.values()):9.3f}")
    if "glass_blur" in names and not args.skip_reference:
        seed = image_seed("bench", "glass_blur", k)
        start = time.perf_counter()
        want = reference_glass_blur(image, k, seed)
        reference = time.perf_counter() - start
        same = np.array_equal(want, corrupt(image, "glass_blur", k, seed=seed))
        port = medians["glass_blur"]
        print(f"\nglass_blur severity {k}: package (pure-Python loop) {reference:.2f} s, port {port:.3f} s, "
              f"{reference / port:.0f}x faster; identical pixels: {'yes' if same else 'NO'}")  # fmt: skip


if __name__ == "__main__":
    main()
