"""MLflow tracking: one run per (experiment, model, seed), resumed, never duplicated; offline when unreachable.

- :mod:`~segmodels.tracking.store`: the tracking URI, the SQLite store and experiments created once under a lock,
  ``check_store`` (a local database file that is not one is named before a job's work).
- :mod:`~segmodels.tracking.logger`: ``RunLogger`` (the run of a training), ``log_to_run`` (later jobs add to it),
  ``sync_offline`` (push what was kept while the store was unreachable).
- :mod:`~segmodels.tracking.models`: ``log_trained_model`` (the run's MLflow model, registered on request),
  ``set_champion`` (the alias of the study's best model).
- :mod:`~segmodels.tracking.offline`: the offline queue file of a run folder.
- :mod:`~segmodels.tracking.datasets`: ``packed_inputs``, the packed data of a training as the run's dataset inputs.

Importing this package is cheap: MLflow is imported when a function needs it.
"""

from __future__ import annotations

from segmodels.study.runs import OFFLINE_FILE, RUN_ID_FILE
from segmodels.tracking.datasets import packed_inputs
from segmodels.tracking.logger import RunLogger, log_to_run, read_run_id, sync_offline
from segmodels.tracking.models import CHAMPION, MODEL_NAME, log_trained_model, registered_name, set_champion
from segmodels.tracking.store import (
    DEFAULT_URI,
    HTTP_DEFAULTS,
    StoreError,
    artifact_root,
    check_store,
    ensure_experiment,
    git_commit,
    tracking_uri,
)

__all__ = [
    "CHAMPION",
    "DEFAULT_URI",
    "HTTP_DEFAULTS",
    "MODEL_NAME",
    "OFFLINE_FILE",
    "RUN_ID_FILE",
    "RunLogger",
    "StoreError",
    "artifact_root",
    "check_store",
    "ensure_experiment",
    "git_commit",
    "log_to_run",
    "log_trained_model",
    "packed_inputs",
    "read_run_id",
    "registered_name",
    "set_champion",
    "sync_offline",
    "tracking_uri",
]
