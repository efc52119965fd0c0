"""``segmodels models``: the model zoo with parameter counts and, optionally, FLOPs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

__all__ = ["COMMANDS"]


def _add_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flops",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="also count GFLOPs of one forward pass at batch 1 for an H×W input (e.g. --flops 512 1024)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="only these {backbone}-{head} models (default: all of them)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument(
        "--output-stride", type=int, default=8, choices=(8, 16, 32), help="backbone output stride (default: 8; a "
        "backbone that cannot be built at it, e.g. a MiT transformer at 32 only, is counted at its own and the "
        "'os' column says so)",
    )
    parser.add_argument("--num-classes", type=int, default=19, help="number of classes (default: 19, Cityscapes)")
    parser.add_argument(
        "--aux",
        action="store_true",
        help="count the auxiliary head too (used in training only; default: the inference model without it, "
        "except for OCR, whose soft object regions are the auxiliary head's logits)",
    )


def _run_models(args: argparse.Namespace) -> int:
    import torch

    from segmodels.models import build_model, catalog, count_flops, count_parameters, list_models, parse_model_name

    if args.flops and min(args.flops) < 1:
        raise ValueError(f"--flops needs a positive height and width, got {args.flops[0]} {args.flops[1]}")
    names = args.models or list_models()
    parsed = [parse_model_name(name) for name in names]  # unknown names fail before any work
    rows = []
    for name, (backbone, head) in zip(names, parsed, strict=True):
        strides = catalog.backbone(backbone).output_strides
        stride = args.output_stride if args.output_stride in strides else strides[-1]
        # Shapes are all that counting needs: the meta device allocates nothing and computes nothing.
        with torch.device("meta"):
            model = build_model(
                backbone,
                head,
                num_classes=args.num_classes,
                output_stride=stride,
                aux=args.aux or catalog.head(head).cascade,
            )
        row: dict[str, object] = {"model": name, "backbone": backbone, "head": head, "output_stride": stride}
        row["params_m"] = round(count_parameters(model) / 1e6, 3)
        if args.flops:
            row["gflops"] = round(count_flops(model, tuple(args.flops)) / 1e9, 2)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    flops_title = f"  GFLOPs@{args.flops[0]}x{args.flops[1]}" if args.flops else ""
    width = max(18, *(len(str(row["model"])) for row in rows))
    print(f"{'model':<{width}} {'os':>3} {'params (M)':>10}{flops_title}")
    for row in rows:
        flops = f"  {row['gflops']:>{len(flops_title) - 2}.1f}" if args.flops else ""
        print(f"{row['model']:<{width}} {row['output_stride']:>3} {row['params_m']:>10.2f}{flops}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "models": (
        "List every {backbone}-{head} model with its parameters (millions) and, with --flops H W, its GFLOPs.",
        _add_models_arguments,
        _run_models,
    ),
}
