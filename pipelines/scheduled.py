"""Scheduled batch: incremental ingest -> score the new rows -> drift check, as one idempotent run per date.

For cron or Airflow: ``jobs/scheduled.py --date 2026-11-23`` (default today, UTC). Each step is idempotent on
its own (ingest skips files it has seen; scoring skips rows the model version has scored; a scoring of the
same input version writes nothing), and the run records ``<data_dir>/runs/scheduled/<pipeline>/<date>.json``
when it finishes: running the same date again returns that record and changes nothing. The drift check
compares the day's predictions with the training baseline and only flags (the record says what drifted).

The steps are passed in (:class:`ScheduledSteps`; ``jobs/scheduled.py`` wires the ingest, batch inference and
monitor pipelines), so this module holds only the order, the idempotency record and what each step is given.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date as Date
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from dlspark.config import AppConfig
from dlspark.paths import resolve_path
from dlspark.runlog import read_json, write_json

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

Step = Callable[["SparkSession", AppConfig, str], Any]


@dataclass(frozen=True)
class ScheduledSteps:
    """The pipeline functions one scheduled run calls, each ``(spark, cfg, run_id) -> report``.

    ``ingest`` returns a report with ``counts.as_dict()``; ``score`` one with ``model, output, rows, scored,
    errors, skipped, accuracy`` (``batch_inference.score_table``); ``monitor`` one with ``report, output,
    drifted`` (``monitor.monitor``).
    """

    ingest: Step
    score: Step
    monitor: Step


def run_scheduled(spark: SparkSession, cfg: AppConfig, run_id: str, *, steps: ScheduledSteps,
                  day: Date | None = None) -> dict[str, Any]:
    """Ingest, score and monitor for ``day`` (default today, UTC); returns the run record (also when already done)."""
    day = day or datetime.now(timezone.utc).date()
    marker = record_path(cfg, day)
    done = read_json(marker)
    if done is not None:
        log.info("scheduled run for %s already finished (run %s): nothing to do", day, done["run_id"])
        return {**done, "skipped": True}
    ingest = steps.ingest(spark, cfg, run_id)
    scoring = steps.score(spark, replace(cfg, inference=replace(cfg.inference, only_new=True)), run_id)
    record: dict[str, Any] = {"run_id": run_id, "date": day.isoformat(), "task": cfg.train.task,
                              "ingest": ingest.counts.as_dict(), "scoring": _scoring(scoring)}
    if not scoring.skipped and scoring.rows >= cfg.monitor.min_rows:
        drift = steps.monitor(spark, replace(cfg, monitor=replace(cfg.monitor, current=scoring.output)), run_id)
        record["monitor"] = {"report": drift.report, "output": drift.output,
                             "drifted": sorted({f"{m.statistic}:{m.feature}" for m in drift.drifted})}
    else:
        record["monitor"] = {"skipped": f"{0 if scoring.skipped else scoring.rows} new rows scored "
                                        f"(monitor.min_rows={cfg.monitor.min_rows})"}
    write_json(marker, record)
    log.info("scheduled run %s for %s: %s", run_id, day, record)
    return {**record, "skipped": False}


def record_path(cfg: AppConfig, day: Date) -> str:
    """Where the run for ``day`` records that it finished."""
    root = resolve_path(cfg.paths.data_dir, "runs/scheduled").rstrip("/")
    return f"{root}/{cfg.train.task}/{day.isoformat()}.json"


def _scoring(report: Any) -> dict[str, Any]:
    return {"model": report.model, "output": report.output, "rows": report.rows, "scored": report.scored,
            "errors": report.errors, "skipped": report.skipped, "accuracy": report.accuracy}
