"""What went into a run: the resolved config, the code version, the machine, the input table; and
per-epoch metrics, which training processes log by run id without an active run of their own."""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from dlspark.config import AppConfig, to_dict

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
_REPO_DIR = Path(__file__).resolve().parents[3]


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"feed": {"batch_size": 128}}}`` -> ``{"train.feed.batch_size": "128"}``.

    Lists, tuples and empty mappings become JSON; ``None`` becomes ``"null"``; values longer than MLflow's
    6000-character limit are cut (the full config is logged as an artifact too).
    """
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


def git_sha(repo_dir: str | os.PathLike = _REPO_DIR) -> str | None:
    """HEAD's commit of the git checkout holding ``repo_dir`` (suffixed ``-dirty`` with local changes), or None."""
    try:
        sha = _git(repo_dir, "rev-parse", "HEAD")
        dirty = _git(repo_dir, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def system_info() -> dict[str, str]:
    """Python, platform, CPU count, and the torch / TensorFlow versions and GPU names when installed."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": str(os.cpu_count()),
    }
    torch = sys.modules.get("torch") or _try_import("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        info["gpus"] = ", ".join(gpus) or "none"
    tf = sys.modules.get("tensorflow")  # importing TF costs seconds: report it only when the run loaded it
    if tf is not None:
        info["tensorflow"] = tf.__version__
    return info


def log_run_inputs(
    cfg: AppConfig, table_uri: str, table_version: int | None, table_fingerprint: str | None,
) -> dict[str, str]:
    """Log everything that determines the active run's result.

    Params: the full resolved config, flattened (``train.lr``, ``train.feed.batch_size``, ...).
    Artifact: ``config/resolved_config.yaml`` (usable as ``--conf`` to rerun the same config).
    Tags: ``git_sha``, ``sys.*`` (see :func:`system_info`), ``input.table``, ``input.table_version``,
    ``input.table_fingerprint``.

    Returns
    -------
    dict
        The tags that were set.

    Raises
    ------
    TrackingError
        When no run is active (call inside :func:`dlspark.tracking.start_run`).
    """
    import mlflow

    from dlspark.tracking.target import TrackingError

    if mlflow.active_run() is None:
        raise TrackingError("log_run_inputs needs an active MLflow run: call it inside `with start_run(...)`")
    tree = to_dict(cfg)
    mlflow.log_params(flatten_params(tree))
    mlflow.log_dict(tree, "config/resolved_config.yaml")
    tags = {"input.table": table_uri, "input.table_version": "none" if table_version is None else str(table_version),
            "input.table_fingerprint": table_fingerprint or "none", "git_sha": git_sha() or "not a git checkout"}
    tags.update({f"sys.{k}": v for k, v in system_info().items()})
    mlflow.set_tags(tags)
    return tags


def log_epoch_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log ``metrics`` at ``step`` to run ``run_id`` from any process (a training worker, say).

    Non-finite values are skipped with a warning rather than stored.

    Raises
    ------
    TrackingError
        When ``run_id`` does not exist in the store at ``tracking_uri``.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from dlspark.tracking.target import TrackingError

    now = int(time.time() * 1000)
    finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    if len(finite) < len(metrics):
        log.warning("step %d: not logging non-finite metrics %s", step, sorted(set(metrics) - set(finite)))
    try:
        MlflowClient(tracking_uri).log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in finite.items()])
    except MlflowException as exc:
        raise TrackingError(f"could not log metrics to run {run_id!r} at {tracking_uri}: {exc.message}; "
                            "pass the run id of a run started with start_run on the same tracking URI") from exc


def _git(repo_dir: str | os.PathLike, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, check=True, timeout=10)
    return done.stdout.strip()


def _try_import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None
