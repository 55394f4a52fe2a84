"""Hyperparameter search: an Optuna study on the driver, each trial a Spark task training on the local backend.

validate ``tune.space`` -> snapshot the table and build the FeedSpecs once (as ``pipelines.train`` does) ->
open (or resume) the study -> MLflow parent run -> ask ``parallelism`` trials, run them as one Spark job (each a
nested MLflow run made in its task), tell the outcomes; repeat until ``tune.n_trials`` trials are done -> write
the best params as a config layer (``best.yaml``), all trials (``trials.json``), and log both to the parent run.

Rerunning with the same ``tune.study`` resumes: only the missing trials run, the same parent run is reopened.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlspark.config import AppConfig, to_dict
from dlspark.paths import resolve_path
from dlspark.tables import read_table, write_table
from dlspark.tracking import TrackingTarget, log_run_inputs, resolve_tracking, start_run
from dlspark.train import require_supported_session
from dlspark.train.inputs import feed_specs, training_labels
from dlspark.tuning import study as studies
from dlspark.tuning.results import TRIALS_DDL, trial_record, trials_table_rows, write_best_yaml, write_trials_json
from dlspark.tuning.space import suggest, validate_space
from dlspark.tuning.spark_trials import run_trials, task_slots
from dlspark.tuning.trial import TrialContext, TrialTask

if TYPE_CHECKING:
    import optuna
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"


class TuneFailed(RuntimeError):
    """No trial of the study completed; the message lists the trials' errors."""


@dataclass(frozen=True)
class TuneReport:
    """What a tuning run produced (``summary`` is JSON-able)."""

    study: str
    parent_run_id: str
    new_trials: int
    best_number: int
    best_value: float
    best_params: dict[str, Any]
    best_yaml: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def tune_model(spark: "SparkSession", cfg: AppConfig, run_id: str) -> TuneReport:
    """Run (or resume) the study of ``cfg.tune`` over ``cfg.train``; see the module docstring."""
    validate_space(cfg.train, cfg.tune)
    require_supported_session(spark, cfg.train)
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    study = studies.open_study(cfg)
    studies.close_stale(study)
    todo = studies.remaining(study, cfg.tune.n_trials)
    parent_id = _reusable_parent(target, study.user_attrs.get(PARENT_ATTR))
    inputs = _training_inputs(spark, cfg) if todo or parent_id is None else None  # nothing to train: skip the table
    tags = {"dlspark.run_id": run_id, "dlspark.tune.study": study.study_name, "dlspark.task": cfg.train.task}
    with start_run(target, cfg.mlflow.experiment, study.study_name, tags=tags, run_id=parent_id) as run:
        if parent_id is None and inputs is not None:
            study.set_user_attr(PARENT_ATTR, run.info.run_id)
            log_run_inputs(cfg, inputs["table_uri"], inputs["version"], inputs["fingerprint"])
        new = 0
        if todo and inputs is not None:
            context = TrialContext(train=cfg.train, tune=cfg.tune, specs=inputs["specs"], labels=inputs["labels"],
                                   checkpoint_dir=f"{studies.output_dir(cfg)}/checkpoints", study=study.study_name,
                                   tracking_uri=target.tracking_uri, experiment_id=run.info.experiment_id,
                                   parent_run_id=run.info.run_id)
            parallelism = min(cfg.tune.parallelism or task_slots(spark), todo)
            new = _run_study(spark, study, context, todo, parallelism, group=f"dlspark-tune-{run_id}")
        else:
            log.info("study %s already has its %d trials; writing its best back", study.study_name, cfg.tune.n_trials)
        report = _write_back(spark, cfg, study, run.info.run_id, new)
    return report


def _training_inputs(spark: "SparkSession", cfg: AppConfig) -> dict[str, Any]:
    """Table snapshot, labels and FeedSpecs, once, on the driver (every trial reuses them)."""
    table_uri = resolve_path(cfg.paths.data_dir, cfg.train.table)
    snapshot = read_table(spark, table_uri, fmt=cfg.train.table_format)
    labels, label_map = training_labels(cfg, table_uri)
    return {"table_uri": table_uri, "version": snapshot.version, "fingerprint": snapshot.fingerprint,
            "labels": labels, "specs": feed_specs(spark, cfg, snapshot, label_map)}


def _reusable_parent(target: TrackingTarget, run_id: str | None) -> str | None:
    """The study's earlier parent run when it still exists in this store, else None (a new one is made)."""
    if not run_id:
        return None
    try:
        run = target.client().get_run(run_id)
    except Exception:  # noqa: BLE001 - gone, or another store: start a new parent run
        log.warning("the study's earlier MLflow run %s is not in %s; starting a new parent run", run_id, target.tracking_uri)
        return None
    return run_id if run.info.lifecycle_stage == "active" else None


def _run_study(spark: "SparkSession", study: "optuna.Study", context: TrialContext, todo: int, parallelism: int,
               group: str) -> int:
    """Ask, run and tell batches of up to ``parallelism`` trials until ``todo`` ran; returns how many ran."""
    log.info("study %s: %d trials to run, %d at a time (each one Spark task)", study.study_name, todo, parallelism)
    done = 0
    while done < todo:
        asked = [study.ask() for _ in range(min(parallelism, todo - done))]
        tasks = [TrialTask(t.number, suggest(t, context.tune.space), context) for t in asked]
        try:
            outcomes = run_trials(spark, tasks, group=group)
        except BaseException:
            studies.fail_interrupted(study, asked, "interrupted: the driver stopped before the trial reported")
            raise
        studies.tell(study, asked, outcomes)
        for o in outcomes:
            log.info("trial %d: %s in %.1fs (pid %s) %s", o.number, "FAIL" if o.failed else f"{o.value:.4f}", o.seconds,
                     o.where.get("pid"), json.dumps(o.params, default=str))
        done += len(asked)
    return done


def _write_back(spark: "SparkSession", cfg: AppConfig, study: "optuna.Study", parent_id: str, new: int) -> TuneReport:
    """best.yaml, trials.json and the trials table under the study's folder, logged to the parent run;
    TuneFailed if none completed."""
    import mlflow
    from optuna.trial import TrialState

    records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    out = Path(studies.output_dir(cfg))
    trials_json = write_trials_json(out / "trials.json", records)
    mlflow.log_artifact(str(trials_json), "tune")
    write_table(spark.createDataFrame(trials_table_rows(study.study_name, records), TRIALS_DDL).coalesce(1),
                str(out / "trials"), fmt="parquet", mode="overwrite")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        errors = "\n".join(f"trial {f['number']}: {f['error'].splitlines()[0] if f['error'] else '?'}"
                           for f in studies.failures(study))
        raise TuneFailed(f"no trial of study {study.study_name!r} completed; fix the cause and rerun (the failed trials "
                         f"count as done: raise tune.n_trials or pick a new tune.study):\n{errors}")
    best = study.best_trial
    metric = cfg.train.monitor
    header = (f"Best of Optuna study {study.study_name!r} ({studies.storage_url(cfg)}): trial {best.number}, "
              f"{metric} {best.value:.4f} over {len(records)} trials.\nTrain with it:\n"
              f"  ./spark-submit.sh jobs/train.py --pipeline <pipeline> --conf {out / 'best.yaml'}")
    best_yaml = write_best_yaml(out / "best.yaml", best.params, header=header)
    mlflow.log_artifact(str(best_yaml), "tune")
    mlflow.log_metrics({f"best_{metric}": float(best.value), "best_trial": best.number,
                        "trials_complete": sum(r["state"] == "COMPLETE" for r in records),
                        "trials_failed": sum(r["state"] == "FAIL" for r in records)})
    mlflow.set_tags({f"best.{k}": str(v) for k, v in best.params.items()})
    _log_best_params(best.params)
    summary = {"study": study.study_name, "storage": studies.storage_url(cfg), "parent_run_id": parent_id,
               "new_trials": new, "trials": len(records), "best_trial": best.number, "metric": metric, "best_value": best.value,
               "best_params": best.params, "best_yaml": str(best_yaml), "tune": to_dict(cfg.tune)}
    return TuneReport(study.study_name, parent_id, new, best.number, float(best.value), dict(best.params),
                      str(best_yaml), records, summary)


def _log_best_params(params: dict[str, Any]) -> None:
    """``best.<key>`` params; a resumed study whose best changed keeps the first ones (params are immutable;
    the ``best.*`` tags and best.yaml always hold the current best)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_params({f"best.{k}": v for k, v in params.items()})
    except MlflowException:
        log.info("best params changed since this parent run first logged them; see its best.* tags and best.yaml")
