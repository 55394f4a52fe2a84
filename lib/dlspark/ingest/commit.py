"""The shared second half of every ingest: dedup, publishing, ledger, reconciled counts, run summary.

``commit_ingest`` takes the outcome rows of the decode/tokenize stage (one per record, with ``record_id``,
``sha256``, ``label``, ``split``, ``reject_reason``/``reject_detail`` and the staged file its table row
went to) and makes the run's outputs durable in this order: table, quarantine table, label mapping,
ledger, summary. A crash after the table write is safe to rerun: the rerun finds the same content
hashes in the table and counts them as duplicates.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pyspark import StorageLevel
from pyspark.sql import functions as F

from dlspark.ingest.files import FileCounts, Sidecar, append_ledger
from dlspark.ingest.outcome import (
    DUPLICATE,
    QUARANTINED,
    WRITTEN,
    IngestCounts,
    OutcomeTally,
    quarantine_rows,
    tally_outcomes,
    with_outcome,
)
from dlspark.labels import resolve_label_map
from dlspark.runlog import StageTimings, log_progress, read_json, write_json
from dlspark.tables import TableSink, read_table, table_exists, write_table
from dlspark.tables.staged import STAGED_FILE, StagingArea, drop_records, task_seconds

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from dlspark.ingest.near_dedup import NearDedup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestTarget:
    """Where and how one ingest writes (the table's columns are the staged files' schema)."""

    pipeline: str
    output: str
    quarantine: str
    fmt: str
    delta_writer: str
    dedup: bool
    labelled: bool
    fixed_labels: Sequence[str] | None
    source_col: str
    raw_col: str | None
    unit: str = "records"

    def sink(self, schema: Any, blob_columns: tuple[str, ...] = ()) -> TableSink:
        """The table's sink for staged files of ``schema`` (Arrow; the ``split`` partition column excluded)."""
        return TableSink(self.output, fmt=self.fmt, schema=schema, blob_columns=blob_columns,
                         delta_writer=self.delta_writer)


@dataclass(frozen=True)
class StagedWrite:
    """Files written by the processing stage itself: the table's sink, this run's staging area and the
    label mapping the workers applied (None: unlabelled)."""

    sink: TableSink
    area: StagingArea
    labels: Mapping[str, int] | None
    id_column: str = "path"            # the table column holding a record's record_id

    @classmethod
    def start(cls, sink: TableSink, labels: Mapping[str, int] | None, id_column: str = "path") -> "StagedWrite":
        return cls(sink, sink.on_write_start(), labels, id_column)


@dataclass
class IngestReport:
    """What a run did; ``summary`` is also written as JSON beside the table."""

    counts: IngestCounts
    summary: dict[str, Any] = field(default_factory=dict)


def commit_ingest(
    spark: "SparkSession",
    records: "DataFrame",
    files: "DataFrame",
    file_counts: FileCounts,
    target: IngestTarget,
    *,
    run_id: str,
    timings: StageTimings,
    context: dict[str, Any],
    staged: StagedWrite,
    record_metrics: "Mapping[str, Column] | None" = None,
    near_dedup: "NearDedup | None" = None,
) -> IngestReport:
    """Dedup, publish and account for ``records``, the outcome rows of the new files' records, whose good
    records the workers already wrote to ``staged`` files (:mod:`dlspark.tables.staged`) with labels
    applied: duplicates are removed from those files, then the files are published.

    ``record_metrics`` are aggregate expressions over all records seen (e.g. how many texts had
    undecodable bytes); their values go into the run summary under ``metrics``. ``near_dedup`` (the optional
    stage of :mod:`dlspark.ingest.near_dedup`) turns near-duplicates of the rows to write into duplicates.
    """
    records = records.persist(StorageLevel.MEMORY_AND_DISK)
    cleanup: list["DataFrame"] = []
    try:
        start = time.perf_counter()
        with timings.stage("process"):
            seen = records.count()
        log_progress("process", rows=seen, seconds=time.perf_counter() - start, unit=target.unit)
        worker_s = task_seconds(staged.area)  # the tasks have run: their step timings are in the staging area
        if seen:
            mapping = staged.labels
            # small outcome rows, read by several actions: decide dedup once
            classified = with_outcome(records, _existing_hashes(spark, target), dedup=target.dedup).persist(StorageLevel.MEMORY_AND_DISK)
            cleanup.append(classified)
            if near_dedup is not None:
                with timings.stage("near_dedup"):
                    classified, near = near_dedup(classified, staged.id_column, run_id)
                    context = {**context, "near_dedup": near}
                    classified = classified.persist(StorageLevel.MEMORY_AND_DISK)
                    cleanup.insert(0, classified)
            with timings.stage("dedup"):  # the first action on `classified`: where dedup is computed
                tally = tally_outcomes(classified, STAGED_FILE)
            writes = _publish_outputs(spark, classified, tally, target, run_id, timings, staged)
            by_outcome, reasons = tally.by_outcome, tally.reasons
            metrics = _metrics(records, record_metrics)
            if mapping is not None:
                write_json(Sidecar(target.output).labels, {"labels": mapping})
        else:
            log.info("nothing new to ingest for %s", target.output)
            mapping, writes, by_outcome, reasons, metrics = None, {}, {WRITTEN: 0, DUPLICATE: 0, QUARANTINED: 0}, {}, {}
        if file_counts.new:
            with timings.stage("ledger"):
                append_ledger(files, Sidecar(target.output), run_id)
    finally:
        for df in (*cleanup, records, files):  # dependents first: unpersisting a base re-caches them
            df.unpersist()
        staged.sink.abort(staged.area)  # no-op once committed
    counts = IngestCounts(
        file_counts.listed, file_counts.already_ingested, file_counts.new, seen,
        by_outcome[WRITTEN], by_outcome[DUPLICATE], by_outcome[QUARANTINED],
    ).reconcile()
    summary_path = Sidecar(target.output).run_summary(run_id)
    summary = _summary(target, run_id, counts, reasons, mapping, writes, timings,
                       {**context, "metrics": metrics, "worker_s": worker_s})
    summary["summary_path"] = summary_path
    write_json(summary_path, summary)
    return IngestReport(counts, summary)


def label_mapping(records: "DataFrame", target: IngestTarget) -> dict[str, int] | None:
    """The label -> index mapping for ``records``' labels: configured, else stored with the table plus new ones."""
    if not target.labelled:
        return None
    if target.fixed_labels is not None:  # configured labels win: no need to read the data for them
        observed: list[str] = []
    else:
        observed = [r["label"] for r in records.select("label").where(F.trim("label") != "").distinct().collect()]
    stored = (read_json(Sidecar(target.output).labels) or {}).get("labels")
    return resolve_label_map(fixed=target.fixed_labels, stored=stored, observed=observed)


def _existing_hashes(spark: "SparkSession", target: IngestTarget) -> "DataFrame | None":
    if not target.dedup or not table_exists(target.output, fmt=target.fmt):
        return None
    return read_table(spark, target.output, fmt=target.fmt).df.select("sha256")


def _publish_outputs(spark: "SparkSession", classified: "DataFrame", tally: OutcomeTally, target: IngestTarget, run_id: str,
                     timings: StageTimings, staged: StagedWrite) -> dict[str, Any]:
    """Drop duplicates from the staged files, publish the files, write the quarantine rows."""
    with timings.stage("commit"):
        if tally.files_with_duplicates:
            _drop_staged_duplicates(classified, staged)
        table = staged.sink.commit(spark, staged.area, tally.written_files)
    with timings.stage("write_quarantine"):
        bad = quarantine_rows(classified, run_id, source=F.col(target.source_col), raw=_raw(target.raw_col))
        quarantine = write_table(bad.coalesce(1), target.quarantine, fmt=target.fmt, mode="append", delta_writer=target.delta_writer)
    log.info("published %d rows to %s (%s, version %s); %d to quarantine %s", table.rows, table.path, table.format,
             table.version, quarantine.rows, quarantine.path)
    return {"table": table.__dict__, "quarantine": quarantine.__dict__}


def _drop_staged_duplicates(classified: "DataFrame", staged: StagedWrite) -> None:
    """Rewrite the staged files that hold records found to be duplicates."""
    dups = classified.where((F.col("outcome") == DUPLICATE) & F.col(STAGED_FILE).isNotNull())
    by_file: dict[str, list[str]] = {}
    for row in dups.select(STAGED_FILE, "record_id").collect():
        by_file.setdefault(row[STAGED_FILE], []).append(row["record_id"])
    if by_file:
        log.info("removing %d duplicate records from %d staged files", sum(map(len, by_file.values())), len(by_file))
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: drop_records(item[0], staged.id_column, item[1], staged.area.blob_columns),
                          by_file.items()))


def _raw(col_name: str | None) -> "Column":
    """The raw input kept with a quarantined record (first 2,000 characters), or null."""
    return F.lit(None).cast("string") if col_name is None else F.substring(F.col(col_name).cast("string"), 1, 2000)


def _metrics(records: "DataFrame", exprs: "Mapping[str, Column] | None") -> dict[str, Any]:
    if not exprs:
        return {}
    row = records.agg(*[expr.alias(name) for name, expr in exprs.items()]).first()
    return {name: row[name] for name in exprs} if row else {}


def _summary(target, run_id, counts, reasons, mapping, writes, timings, context) -> dict[str, Any]:  # noqa: ANN001
    total = sum(timings.seconds.values())
    return {
        "run_id": run_id,
        "pipeline": target.pipeline,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "counts": counts.as_dict(),
        "quarantine_reasons": reasons,
        "labels": mapping,
        "outputs": writes,
        "timings_s": timings.seconds,
        "records_per_s": round(counts.seen / total, 1) if total > 0 else None,
        **context,
    }
