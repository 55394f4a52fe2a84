"""Where runs and models are tracked: resolve the MLflow URIs from config, open runs against them.

The default is embedded: a sqlite file and a local artifact folder under ``paths.data_dir/mlflow``, so
``mlflow ui --backend-store-uri sqlite:///<data_dir>/mlflow/mlflow.db`` shows every run without a server.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from dlspark.config import MlflowConfig
from dlspark.paths import is_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """A tracking or registry call could not be done as asked (bad name, version, URI...)."""


@dataclass(frozen=True)
class TrackingTarget:
    """Resolved MLflow locations. Picklable, so training processes can log to the same store."""

    tracking_uri: str
    registry_uri: str
    artifact_location: str | None  # for new experiments; None = the tracking server decides

    def client(self) -> MlflowClient:
        """An ``MlflowClient`` bound to these URIs (no global MLflow state touched)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def ui_command(self) -> str:
        """The shell command that browses this store."""
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


def resolve_tracking(mlflow_cfg: MlflowConfig, data_dir: str) -> TrackingTarget:
    """Resolve ``mlflow.tracking_uri``/``registry_uri``; null means an embedded sqlite store under ``data_dir``.

    Parameters
    ----------
    mlflow_cfg
        The ``mlflow`` config section.
    data_dir
        ``paths.data_dir``; a local folder (made absolute) when the embedded store is used.

    Returns
    -------
    TrackingTarget
        ``sqlite:///<abs data_dir>/mlflow/mlflow.db`` and ``<abs data_dir>/mlflow/artifacts`` by default.
    """
    if mlflow_cfg.tracking_uri:
        tracking = mlflow_cfg.tracking_uri
        return TrackingTarget(tracking, mlflow_cfg.registry_uri or tracking, None)
    if is_uri(data_dir) and not data_dir.startswith("file:"):
        raise TrackingError(
            f"mlflow.tracking_uri is null, so the embedded sqlite store would live under paths.data_dir={data_dir!r}, "
            "which is not a local folder; set mlflow.tracking_uri (e.g. http://mlflow:5000) or a local paths.data_dir"
        )
    root = Path(data_dir.removeprefix("file://").removeprefix("file:")).resolve() / "mlflow"
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    return TrackingTarget(tracking, mlflow_cfg.registry_uri or tracking, (root / "artifacts").as_uri())


def ensure_experiment(target: TrackingTarget, experiment: str) -> str:
    """Id of ``experiment``, created (with the target's artifact location) if missing; restored if deleted."""
    client = target.client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        location = f"{target.artifact_location}/{experiment}" if target.artifact_location else None
        return client.create_experiment(experiment, artifact_location=location)
    if found.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted; restoring it", experiment)
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


@contextlib.contextmanager
def start_run(
    target: TrackingTarget, experiment: str, run_name: str, *, tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[Run]:
    """Open an MLflow run in ``experiment`` on ``target`` and make it the active run.

    Points the fluent ``mlflow`` API at ``target`` for the duration (restoring the previous URIs after),
    so ``mlflow.log_*`` and the ``log_*`` helpers of this package write to the same store. The run ends
    FINISHED, or FAILED when the block raises. Pass ``run_id`` to reopen an existing run (resume).
    """
    import mlflow

    folder = _sqlite_folder(target.tracking_uri)
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    experiment_id = ensure_experiment(target, experiment)
    with using_target(target), mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                                                run_name=None if run_id else run_name, tags=dict(tags or {})) as run:
        log.info("MLflow run %s (%s) in experiment %r; browse with: %s",
                 run.info.run_id, run_name, experiment, target.ui_command())
        yield run


def log_job_run(target: TrackingTarget, experiment: str, job: str, run_id: str, *, params: Mapping[str, Any],
                metrics: Mapping[str, float], report_path: str, artifact_dir: str) -> str:
    """One MLflow run ``<job>-<run_id>`` of a batch job (monitor, explain): ``params`` (keys made MLflow-safe, values
    cut to 500 characters), ``metrics``, and its HTML report under ``artifact_dir``; returns the MLflow run id."""
    import mlflow

    from dlspark.filesystem import read_text

    with start_run(target, experiment, f"{job}-{run_id}", tags={"dlspark.job": job}) as run:
        mlflow.log_params({re.sub(r"[^\w]+", "_", k): str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({re.sub(r"[^\w\-./ ]", "_", k): float(v) for k, v in metrics.items()})
        if "://" not in report_path or report_path.startswith("file:"):
            mlflow.log_artifact(report_path.removeprefix("file://"), artifact_path=artifact_dir)
        else:
            mlflow.log_text(read_text(report_path) or "", f"{artifact_dir}/{Path(report_path).name}")
        return run.info.run_id


@contextlib.contextmanager
def using_target(target: TrackingTarget) -> Iterator[None]:
    """Point the fluent ``mlflow`` API (``mlflow.artifacts``, ``mlflow.log_*``) at ``target``, then restore it."""
    import mlflow

    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.registry_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def _sqlite_folder(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(os.path.dirname(uri.removeprefix("sqlite:///")) or ".")
