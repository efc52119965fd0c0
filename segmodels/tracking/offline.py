"""The offline queue of a run folder: what a job could not send to the tracking store, one JSON record a line.

``RunLogger`` appends here once the store is unreachable; ``sync_offline`` (``segmodels mlflow-sync``) reads the
records back and pushes them. Appends are locked and fsynced, so jobs of one run folder never interleave lines.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from segmodels.locks import locked
from segmodels.study.runs import OFFLINE_FILE

__all__ = ["append_record", "read_records"]


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record to ``run_dir/mlflow_offline.jsonl``."""
    path = run_dir / OFFLINE_FILE
    line = json.dumps(record, default=str) + "\n"
    with locked(path.with_name(path.name + ".lock")), path.open("a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of an offline file, in the order they were written; an unreadable line is skipped, with a warning."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a job killed mid-write leaves at most a torn last line
                warnings.warn(f"{path}:{number}: skipping an unreadable line", RuntimeWarning, stacklevel=3)
    return records
