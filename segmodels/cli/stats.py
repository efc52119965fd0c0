"""Subcommand ``compare``: paired bootstrap intervals and Holm-adjusted tests of the mIoU differences the report
discusses."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["COMMANDS"]


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML); its 'stats' section sets the "
                   "resample count, seed and confidence level")  # fmt: skip
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
    p.add_argument("--out", type=Path, help="comparisons CSV (default: results/{experiment}/comparisons.csv)")
    p.add_argument("--resamples", type=int, help="bootstrap resamples (default: the config's stats.resamples)")
    p.add_argument("--seed", type=int, help="resampling seed (default: the config's stats.seed)")


def _run_compare(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from segmodels.atomic import write_text_atomic
    from segmodels.study.config import load_config
    from segmodels.study.stats import bootstrap_study, comparisons_table

    cfg = load_config(args.config)
    changes = {k: v for k, v in {"resamples": args.resamples, "seed": args.seed}.items() if v is not None}
    if changes.get("resamples", 1) < 1:
        raise ValueError(f"--resamples must be a positive integer, got {args.resamples}")
    cfg.stats = dataclasses.replace(cfg.stats, **changes)
    out = args.out or args.results / cfg.experiment / "comparisons.csv"
    start = time.perf_counter()
    boots, notes = bootstrap_study(cfg, args.results)
    table = comparisons_table(boots, cfg.stats)
    for note in notes:
        print(f"note: {note}")
    # p-values in their shortest exact form, so a verdict recomputed from the file is the one printed here
    exact = {col: table[col].map(lambda p: repr(float(p))) for col in ("p_value", "p_holm")}
    write_text_atomic(out, table.assign(**exact).to_csv(index=False, float_format="%.4f"))
    level = f"{cfg.stats.confidence:.0%}"
    for row in table.itertuples():
        verdict = "significant" if row.significant else "not distinguishable"
        print(f"{row.pair}: {row.diff:+.2f} mIoU points, {level} interval [{row.lo:+.2f}, {row.hi:+.2f}], "
              f"p {row.p_value:.4f}, Holm-adjusted p {row.p_holm:.4f}: {verdict}")  # fmt: skip
    print(f"wrote {out} ({len(table)} pairs, one Holm family at alpha {1 - cfg.stats.confidence:.2g}, {len(boots)} "
          f"models, {cfg.stats.resamples} resamples, {time.perf_counter() - start:.2f} s)")  # fmt: skip
    return 0


COMMANDS = {
    "compare": (
        "Paired bootstrap over training seeds and validation images: the interval and Holm-adjusted p-value of each "
        "discussed mIoU difference (comparisons.csv).",
        _add_compare,
        _run_compare,
    ),
}
