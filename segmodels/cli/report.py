"""Subcommands ``figures`` and ``report``: the study's figures and its PDF report, from the results files alone."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["COMMANDS"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML); names the experiment and models")
    p.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="results root holding {experiment}/summary.csv and the run folders (default: results)",
    )


def _add_figures(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("reports/figures"),
        help="folder for the PNG and PDF figures and figures.json (default: reports/figures)",
    )


def _run_figures(args: argparse.Namespace) -> int:
    from segmodels.report.figures import make_figures
    from segmodels.study.config import load_config

    cfg = load_config(args.config)
    index = make_figures(cfg, args.results, args.out)
    print(f"{len(index['figures'])} figures, {len(index['skipped'])} skipped; index {args.out / 'figures.json'}")
    return 0


def _add_report(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument(
        "--figures",
        type=Path,
        default=Path("reports/figures"),
        help="folder written by 'segmodels figures' (default: reports/figures)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("reports/report.pdf"), help="PDF to write (default: reports/report.pdf)"
    )
    p.add_argument(
        "--template",
        type=Path,
        default=None,
        help="Typst template (default: the template installed with segmodels)",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=Path("data/packed"),
        help="packed data root, for {dataset}/manifest.json (default: data/packed)",
    )


def _run_report(args: argparse.Namespace) -> int:
    from segmodels.report import TEMPLATE
    from segmodels.report.typeset import write_report
    from segmodels.study.config import load_config

    cfg = load_config(args.config)
    template = args.template or TEMPLATE
    write_report(
        cfg, args.results, args.figures, args.out, template=template, data_root=args.data_root, config_path=args.config
    )
    return 0


COMMANDS = {
    "figures": (
        "Draw the study's figures (PNG and PDF) and figures.json from the results files; figures without inputs are skipped.",
        _add_figures,
        _run_figures,
    ),
    "report": (
        "Typeset the study's PDF report (tables, figures, computed findings, MLflow run ids) with Typst.",
        _add_report,
        _run_report,
    ),
}
