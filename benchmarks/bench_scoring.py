"""What the benchmark's extra statistics cost in a full-resolution evaluation:
``python benchmarks/bench_scoring.py [--images 4 --size 1024 2048 --model resnet18-ppm --device cpu]``.

Full-size rehearsal scenes (the generator of ``segmodels synth``, Cityscapes' 1024×2048, with instance ids) are
scored as ``segmodels evaluate --full-resolution`` scores them: the model's forward pass on the packed image
(``--packed``, default 512×1024), its scores upsampled to the raw labels' size and the argmax, then the per-image
statistics. Per image it times, on the same predictions:

* baseline: the forward pass, the upsampling and the confusion matrix (what evaluation cost before);
* the instance-level counts (iIoU of classes and categories), and the category matrix;
* the Boundary IoU counts.

Prints each median and its ratio to the baseline measured in the same run (the budgets: instance counts ~10 %,
everything together ~20 %), with the device.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from segmodels.boundary import boundary_counts
from segmodels.data.labels import ID_TO_TRAINID
from segmodels.data.labelset import cityscapes_label_set
from segmodels.data.loader import normalize
from segmodels.data.synthetic import SynthParams, render_with_instances
from segmodels.devices import cpu_name, resolve_device
from segmodels.metrics import batch_confusion
from segmodels.models.catalog import arch_of
from segmodels.models.segmentor import build_model
from segmodels.scoring import instance_counts, score_layout


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4, help="rehearsal scenes scored (default 4)")
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"), help="raw label size")
    p.add_argument("--packed", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"), help="model input size")
    p.add_argument("--model", default="resnet18-ppm", help="{backbone}-{head}, random weights (default resnet18-ppm)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per image, median (default 3)")
    args = p.parse_args()
    if args.images < 1 or args.repeats < 1 or min(args.size + args.packed) < 8:
        p.error("--images and --repeats must be positive, sizes at least 8 pixels")

    device = resolve_device(args.device)
    torch.manual_seed(0)
    backbone, head = arch_of(args.model)
    model = build_model(backbone, head, num_classes=19, pretrained=None).to(device).eval()
    layout = score_layout(cityscapes_label_set(), instances=True)
    params = SynthParams(size=tuple(args.size))
    base, inst, bnd = [], [], []
    for i in range(args.images):
        image, ids, instances = render_with_instances(params, "val", i)
        target = torch.from_numpy(ID_TO_TRAINID[ids].astype(np.int64)).to(device)[None]
        inst_ids = torch.from_numpy(instances.astype(np.int32)).to(device)[None]
        x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
        x = F.interpolate(normalize(x), size=tuple(args.packed), mode="bilinear", align_corners=False)
        state: dict[str, torch.Tensor] = {}

        def baseline(x=x, target=target, state=state) -> None:
            with torch.inference_mode():
                scores = model(x)["out"].float()
                up = F.interpolate(scores, size=target.shape[-2:], mode="bilinear", align_corners=False)
                state["pred"] = up.argmax(1)
                batch_confusion(state["pred"], target, 19)

        base.append(_median(baseline, args.repeats, device))
        pred = state["pred"]
        inst.append(_median(lambda pred=pred, ids=inst_ids: instance_counts(pred, ids, layout), args.repeats, device))
        bnd.append(_median(lambda pred=pred, target=target: boundary_counts(pred, target, 19), args.repeats, device))
    b, i_, d = statistics.median(base), statistics.median(inst), statistics.median(bnd)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"{args.images} rehearsal scenes at {args.size[0]}×{args.size[1]}, {args.model} on {args.packed[0]}×"
          f"{args.packed[1]}, {where}; median seconds per image")  # fmt: skip
    print(f"  baseline (forward, upsampling, confusion): {b:.4f} s")
    print(f"  instance-level counts:                     {i_:.4f} s  ({i_ / b:.1%} of the baseline)")
    print(f"  Boundary IoU counts:                       {d:.4f} s  ({d / b:.1%} of the baseline)")
    print(f"  all statistics:                            {i_ + d:.4f} s  ({(i_ + d) / b:.1%} of the baseline)")


if __name__ == "__main__":
    main()
