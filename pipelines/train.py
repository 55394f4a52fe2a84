"""Training pipeline: an ingested table -> trained, evaluated, tracked and registered model.

snapshot the table (version + fingerprint) -> one FeedSpec per split (arrow: the snapshot's files;
petastorm: ``make_spark_converter``) -> MLflow run: inputs, then ``run_training`` on the configured backend
(local | horovod | torch_distributor; rank 0 logs per-epoch metrics) -> best model logged with its label
mapping and preprocessing spec -> registered as ``candidate``; ``champion`` only if it beats the champion.

Rerunning with the same ``train.run_name`` resumes from the latest checkpoint (see ``dlspark.train``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlspark.config import AppConfig, to_dict
from dlspark.feed import (
    FeedSpec,
    open_batches,
    preprocessing_spec,
)
from dlspark.paths import resolve_path
from dlspark.tables import read_table
from dlspark.tracking import RegistrationResult, log_run_inputs, register_and_promote, resolve_tracking, start_run
from dlspark.tracking.registry import CHAMPION, WEIGHTS_TAG, find_version
from dlspark.train import TrainJob, TrainResult, require_supported_session, run_training
from dlspark.train.inputs import TrainInputError, feed_specs, training_labels
from dlspark.train.teacher import TEACHER_COLUMN, TeacherTable, teacher_table
from dlspark.train.transfer_source import transfer_source

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainReport:
    """What a training run produced."""

    mlflow_run_id: str
    result: TrainResult
    model_uri: str
    registered_model: str | None
    registration: RegistrationResult | None
    table_version: int | None
    summary: dict[str, Any] = field(default_factory=dict)


def train_model(spark: "SparkSession", cfg: AppConfig, run_id: str) -> TrainReport:
    """Train ``cfg.train`` on its table, log everything to MLflow and register the model."""
    tcfg = cfg.train
    require_supported_session(spark, tcfg)
    table_uri = resolve_path(cfg.paths.data_dir, tcfg.table)
    snapshot = read_table(spark, table_uri, fmt=tcfg.table_format)
    labels, label_map = training_labels(cfg, table_uri)
    teacher = teacher_table(spark, cfg, snapshot, labels, label_map) if tcfg.distill.enabled else None
    specs = feed_specs(spark, cfg, teacher.snapshot if teacher else snapshot, label_map, TEACHER_COLUMN if teacher else None)
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    run_name = tcfg.run_name or tcfg.task
    model_name = cfg.registered_model
    source = transfer_source(target, cfg) if tcfg.transfer.enabled else None
    with start_run(target, cfg.mlflow.experiment, run_name, tags={"dlspark.run_id": run_id, "dlspark.task": tcfg.task}) as run:
        log_run_inputs(cfg, table_uri, snapshot.version, snapshot.fingerprint)
        lineage = {**distill_lineage(cfg, teacher), **(source.tags if source else {})}
        if lineage:
            import mlflow

            mlflow.set_tags(lineage)
        job = TrainJob(config=tcfg, train=specs["train"], val=specs["val"], test=specs["test"], num_classes=len(labels),
                       labels=labels, checkpoint_dir=resolve_path(cfg.paths.data_dir, tcfg.checkpoint_dir), run_name=run_name,
                       mlflow_tracking_uri=target.tracking_uri, mlflow_run_id=run.info.run_id,
                       init_weights=source.weights if source else None)
        result = run_training(job, tcfg.backend, spark=spark)
        _log_result(result)
        if tcfg.report:
            _log_report(cfg, result, labels, specs["test"], run_name)
        registered = find_version(target, model_name, WEIGHTS_TAG, result.weights_digest) if result.weights_digest else None
        registration = None
        if registered is not None:   # a rerun of a finished run: these weights are a version already
            model_uri = f"models:/{model_name}/{registered.version}"
            registration = RegistrationResult(registered.version, CHAMPION in registered.aliases, None,
                                              f"the same trained weights are version {registered.version} already "
                                              "(a rerun of a finished run): nothing new registered")
        else:
            model_uri = _log_model(cfg, result, labels, specs["test"])
        if cfg.mlflow.register and registered is None:
            metric = cfg.mlflow.promote_metric
            value = _metric(result, metric)
            tags = {**lineage, **({WEIGHTS_TAG: result.weights_digest} if result.weights_digest else {})}
            registration = register_and_promote(target, model_name, run.info.run_id, "model", metric, value, tags=tags)
    summary = _summary(cfg, run.info.run_id, result, model_uri, model_name, registration, snapshot, target.ui_command())
    summary["registered_now"] = registration is not None and registered is None
    log.info("trained %s: test accuracy %.4f; %s", run_name, result.test_metrics.get("test_accuracy", float("nan")),
             registration.reason if registration else "not registered")
    return TrainReport(run.info.run_id, result, model_uri, model_name if registration else None, registration,
                       snapshot.version, summary)


def distill_lineage(cfg: AppConfig, teacher: TeacherTable | None) -> dict[str, str]:
    """Tags naming the teacher a student learned from (run and registered version); empty without distillation."""
    if teacher is None:
        return {}
    d, ref = cfg.train.distill, teacher.teacher.source_ref
    return {"dlspark.distill.teacher": ref.label, "dlspark.distill.teacher_uri": ref.uri,
            "dlspark.distill.teacher_runtime": teacher.teacher.runtime_label, "dlspark.distill.temperature": str(d.temperature),
            "dlspark.distill.alpha": str(d.alpha), "dlspark.distill.table": teacher.snapshot.path}


def _log_report(cfg: AppConfig, result: TrainResult, labels: tuple[str, ...], test: FeedSpec, run_name: str) -> None:
    """The training report beside the run's checkpoints and in the MLflow run (``report/``)."""
    import tempfile

    import mlflow

    from dlspark.filesystem import resolve
    from dlspark.paths import is_uri
    from dlspark.train.run_report import write_run_report

    folder = f"{resolve_path(cfg.paths.data_dir, cfg.train.checkpoint_dir).rstrip('/')}/{run_name}/report"
    facts = {"run": run_name, "task": cfg.train.task, "model": result.model_spec.get("name"), "backend": result.backend,
             "world size": result.world_size, "best epoch": result.best_epoch, cfg.train.monitor: result.best_metric}
    with tempfile.TemporaryDirectory(prefix="dlspark-report-") as tmp:
        local = Path(tmp) if is_uri(folder) else Path(folder)
        page = write_run_report(result, test, labels, local, facts, tokenizer=cfg.ingest_text.tokenizer)
        if is_uri(folder):
            fs, path = resolve(folder)
            fs.put(str(local), path, recursive=True)
        mlflow.log_artifacts(str(local), "report")
    log.info("training report: %s (MLflow run artifacts: report/)", folder if is_uri(folder) else page)


def _metric(result: TrainResult, name: str) -> float:
    """A promotion metric from the result: the best validation metric, or a test metric."""
    if name == result.monitor:
        return float(result.best_metric)
    best = result.history[result.best_epoch] if result.best_epoch < len(result.history) else result.history[-1]
    for source in (result.test_metrics, best):
        if name in source:
            return float(source[name])
    raise TrainInputError(f"mlflow.promote_metric={name!r} is not a metric of this run; use one of "
                          f"{sorted(set(result.test_metrics) | set(best) | {result.monitor})}")


def _log_result(result: TrainResult) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in result.test_metrics.items()})
    mlflow.log_metrics({"best_epoch": result.best_epoch, f"best_{result.monitor}": float(result.best_metric)})
    mlflow.set_tags({"train.backend": result.backend, "train.world_size": str(result.world_size),
                     "train.stopped_early": str(result.stopped_early), "train.resumed_from": str(result.resumed_from)})
    mlflow.log_dict({"history": list(result.history), "timing": result.timing}, "train/history.json")


def _log_model(cfg: AppConfig, result: TrainResult, labels: tuple[str, ...], test: FeedSpec) -> str:
    """Log the best model (pytorch flavor, or Keras SavedModel) with labels and preprocessing spec; returns its URI."""
    extras = {"labels.json": {"labels": list(labels)}, "preprocessing.json": _preprocessing(cfg, test),
              "model_spec.json": result.model_spec, "train_config.json": to_dict(cfg)["train"]}
    if cfg.train.framework == "tensorflow":  # Keras takes NHWC
        from dlspark.tracking import log_keras_model
        from dlspark.train.tf_loop import load_best_keras_model

        example = _first_batch(replace(test, channels_last=True))["x"]
        return log_keras_model(load_best_keras_model(result), np.ascontiguousarray(example), extras).model_uri
    batch = _first_batch(test)
    from dlspark.models.servable import example_input, load_trained_model, servable
    from dlspark.tracking import log_torch_model

    model = servable(load_trained_model(result.model_path, result.model_spec), test.kind)
    return log_torch_model(model, example_input(batch, test.kind), extras).model_uri


def _preprocessing(cfg: AppConfig, test: FeedSpec) -> dict[str, Any]:
    """The feeder's preprocessing spec; text models also record how raw text becomes ids (for streams and APIs)."""
    spec = preprocessing_spec(test)
    if test.kind == "text":
        t = cfg.ingest_text
        spec["text"] = {"tokenizer": t.tokenizer, "normalize": {"lowercase": t.lowercase, "mask_urls": t.mask_urls,
                        "mask_mentions": t.mask_mentions, "url_token": t.url_token, "mention_token": t.mention_token}}
    return spec


def _first_batch(spec: FeedSpec) -> dict[str, np.ndarray]:
    with open_batches(replace(spec, shuffle=False, augment=False, batch_size=4, limit_rows=4)) as batches:
        return next(iter(batches))


def _summary(cfg, mlflow_run_id, result, model_uri, model_name, registration, snapshot, ui) -> dict[str, Any]:  # noqa: ANN001
    return {
        "mlflow_run_id": mlflow_run_id, "task": cfg.train.task, "backend": result.backend, "world_size": result.world_size,
        "feeder": cfg.train.feed.feeder, "epochs_trained": len(result.history), "best_epoch": result.best_epoch,
        f"best_{result.monitor}": result.best_metric, "test_metrics": result.test_metrics, "model_uri": model_uri,
        "registered_model": model_name if registration else None,
        "version": registration.version if registration else None,
        "champion": bool(registration and registration.promoted), "table": snapshot.path,
        "table_version": snapshot.version, "table_fingerprint": snapshot.fingerprint, "mlflow_ui": ui,
    }
