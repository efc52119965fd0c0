"""The ``segmodels`` command line: one subcommand per job of the study.

Each area of the library keeps its subcommands in a light ``cli`` module
(argparse only, heavy imports inside the handlers), so ``segmodels --help``
answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from segmodels import __version__

__all__ = ["build_parser", "main"]

# Modules whose COMMANDS dict maps a subcommand to (help, add_arguments, run).
_AREAS = (
    "segmodels.cli.data",
    "segmodels.cli.models",
    "segmodels.cli.train",
    "segmodels.cli.inference",
    "segmodels.cli.robustness",
    "segmodels.cli.study",
    "segmodels.cli.plan",
    "segmodels.cli.report",
    "segmodels.cli.mlflow",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmodels",
        description="Semantic-segmentation study on Cityscapes: data, models, training, evaluation, benchmarks.",
        epilog="Run 'segmodels COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"segmodels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _AREAS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for name, (help_text, add_arguments, run) in module.COMMANDS.items():
            cmd = sub.add_parser(name, help=help_text, description=help_text)
            add_arguments(cmd)
            cmd.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        if "pip install" not in str(exc):  # not a missing optional package that says what to install: a bug
            raise
        print(f"segmodels {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: one clear line, no traceback. Bugs still raise.
        print(f"segmodels {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The system refused (full disk, permissions, I/O error): its message says it all, a traceback hides it.
        print(f"segmodels {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
