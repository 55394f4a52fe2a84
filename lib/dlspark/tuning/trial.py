"""One trial, inside a Spark task: a nested MLflow run around ``run_training`` on the local backend.

Imported by the executors (it is what the trial RDD maps over). The run is created here, in the task, as a
child of the driver's study run (tag ``mlflow.parentRunId``); the training loop logs its per-epoch metrics to it,
this module the sampled params, the objective and, on failure, the error (the run ends FAILED and the trial
comes back as a failure instead of failing the Spark job).
"""
from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Mapping

from dlspark.config import TrainConfig
from dlspark.config.schema import TuneConfig
from dlspark.tuning.results import TrialOutcome
from dlspark.tuning.space import apply_params

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
_ERROR_CHARS = 4000


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one study shares; built once on the driver, pickled into each task."""

    train: TrainConfig
    tune: TuneConfig
    specs: Mapping[str, Any]            # split -> FeedSpec, from the driver's table snapshot
    labels: tuple[str, ...]
    checkpoint_dir: str                 # <data_dir>/<tune.output_dir>/<study>/checkpoints
    study: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


@dataclass(frozen=True)
class TrialTask:
    """One trial to run: its Optuna number and sampled params."""

    number: int
    params: dict[str, Any]
    context: TrialContext


def run_trial(task: TrialTask) -> TrialOutcome:
    """Run ``task`` as a nested MLflow run; every error becomes a failed outcome (and a FAILED run)."""
    t0 = time.perf_counter()
    where = task_location()
    run_id = None
    try:
        run_id = _start_child_run(task, where)
        value, best_epoch = _train(task, run_id)
        _finish(task.context, run_id, value)
        return TrialOutcome(task.number, value, dict(task.params), run_id, None, time.perf_counter() - t0, where, best_epoch)
    except Exception as exc:  # noqa: BLE001 - a failed trial is a result, not a failed Spark job
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"[-_ERROR_CHARS:]
        log.warning("trial %d failed: %s", task.number, exc)
        _record_failure(task.context, run_id, error)
        return TrialOutcome(task.number, None, dict(task.params), run_id, error, time.perf_counter() - t0, where)


def task_location() -> dict[str, Any]:
    """pid, host, Spark partition and task cpus of the process running the trial (partition -1: not in a task)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return {"pid": os.getpid(), "host": socket.gethostname(), "partition": ctx.partitionId() if ctx else -1,
            "task_cpus": ctx.cpus() if ctx else None}


def trial_config(task: TrialTask) -> TrainConfig:
    """The trial's TrainConfig: caps, then params; local backend; a run name of its own."""
    ctx = task.context
    return apply_params(ctx.train, task.params, ctx.tune, backend="local", run_name=f"trial-{task.number}")


def trial_specs(specs: Mapping[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The driver's FeedSpecs with what the trial may change: batch size, row limit, seed, shuffle, readers, augment."""
    feed = cfg.feed
    out = {}
    for split, spec in specs.items():
        out[split] = replace(spec, batch_size=feed.batch_size, limit_rows=cfg.limit_rows, seed=cfg.seed,
                             shuffle_buffer=feed.shuffle_buffer, prefetch_batches=feed.prefetch_batches,
                             reader_threads=feed.reader_threads,
                             augment=feed.augment and split == "train" and spec.kind == "image")
    return out


def _start_child_run(task: TrialTask, where: Mapping[str, Any]) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    ctx = task.context
    client = MlflowClient(ctx.tracking_uri)
    tags = {PARENT_TAG: ctx.parent_run_id, "dlspark.tune.study": ctx.study, "dlspark.tune.trial": str(task.number),
            **{f"dlspark.tune.{k}": str(v) for k, v in where.items()}}
    run = client.create_run(ctx.experiment_id, run_name=f"{ctx.study}-trial-{task.number}", tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in task.params.items()])
    return run.info.run_id


def _train(task: TrialTask, run_id: str) -> tuple[float, int]:
    """Train the trial on the local backend; (best value of train.monitor on val, its epoch)."""
    from dlspark.train import TrainJob, run_training
    from dlspark.train.checkpoint import CheckpointStore

    ctx = task.context
    cfg = trial_config(task)
    _limit_threads()
    specs = trial_specs(ctx.specs, cfg)
    store = CheckpointStore(ctx.checkpoint_dir, cfg.run_name or "")
    if store.fs.exists(store.dir):  # a trial starts fresh: never resume another study's trial of the same number
        store.fs.rm(store.dir, recursive=True)
    job = TrainJob(config=cfg, train=specs["train"], val=specs["val"], test=None, num_classes=len(ctx.labels),
                   labels=ctx.labels, checkpoint_dir=ctx.checkpoint_dir, run_name=cfg.run_name or "",
                   mlflow_tracking_uri=ctx.tracking_uri, mlflow_run_id=run_id)
    result = run_training(job, "local")
    return float(result.best_metric), int(result.best_epoch)


def _limit_threads() -> None:
    """torch intra-op threads = the task's cpus (spark.task.cpus), so parallel trials do not oversubscribe."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None:
        import torch

        torch.set_num_threads(max(1, int(ctx.cpus())))


def _finish(ctx: TrialContext, run_id: str, value: float) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(ctx.tracking_uri)
    client.log_metric(run_id, "objective", value)
    client.log_metric(run_id, f"best_{ctx.train.monitor}", value)
    client.set_terminated(run_id, "FINISHED")


def _record_failure(ctx: TrialContext, run_id: str | None, error: str) -> None:
    """Tag the error on the trial's run and end it FAILED; tracking trouble here is logged, never raised."""
    if run_id is None:
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient(ctx.tracking_uri)
        client.set_tag(run_id, "dlspark.tune.error", error[-_ERROR_CHARS:])
        client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the trial's own error is what matters; keep it
        log.exception("could not record the failure of MLflow run %s", run_id)
