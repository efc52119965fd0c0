"""The study's report: results readers, findings, tables, figures and the Typst typesetting (+ its template).

This module stays light (no pandas, no matplotlib) so the workflow can name the template cheaply.
"""

from pathlib import Path

__all__ = ["TEMPLATE"]

TEMPLATE = Path(__file__).resolve().parent / "template" / "report.typ"  # package data: installed with segmodels
