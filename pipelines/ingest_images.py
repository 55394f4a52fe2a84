"""Image ingest: a folder tree of image files -> fixed-shape uint8 tensor table + quarantine table.

list (new files only) -> label -> read (binaryFile) -> decode/resize and write Parquet in the Python
workers -> dedup across tasks (-> near-dedup by embeddings, ``ingest_images.near_dedup``) -> publish the files.
Spark carries only one small outcome row per file.
Reruns are idempotent and incremental (see ``dlspark.ingest``).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from dlspark.config import AppConfig, ImageIngestConfig, config_hash
from dlspark.filesystem import qualify
from dlspark.images import ImageSpec
from dlspark.images.batches import BLOB_COLUMNS, OUTCOME_DDL, ImageBatchJob, decode_batch, table_schema
from dlspark.ingest.commit import IngestReport, IngestTarget, StagedWrite, commit_ingest, label_mapping
from dlspark.ingest.files import Sidecar, find_new_files, released_on_error
from dlspark.ingest.near_dedup import near_dedup_stage
from dlspark.ingest.reading import read_then
from dlspark.paths import resolve_path
from dlspark.runlog import StageTimings
from dlspark.tables.staged import stage_batches, staged_outcome_ddl

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

OUTCOME_SCHEMA = staged_outcome_ddl(OUTCOME_DDL)


def ingest_images(spark: "SparkSession", cfg: AppConfig, run_id: str) -> IngestReport:
    """Ingest the new files under ``cfg.ingest_images.input``; returns counts and the run summary."""
    icfg = cfg.ingest_images
    source = resolve_path(cfg.paths.data_dir, icfg.input)
    target = image_target(cfg)
    timings = StageTimings()
    # `listing` is persisted; commit_ingest unpersists it (a derived frame such as `files` holds no cache).
    listing, counts = find_new_files(spark, source, icfg.glob, icfg.recursive, Sidecar(target.output), timings)
    with released_on_error(listing):
        files = _with_labels(spark, listing, icfg, source, cfg.paths.data_dir)
        staged = StagedWrite.start(target.sink(table_schema(icfg.keep_original), BLOB_COLUMNS),
                                   label_mapping(files, target) if counts.new else None)
        job = _batch_job(cfg, staged, run_id)
        records = _decode(files, cfg, job, staged) if counts.new else _empty_records(spark)
    context = {"input": source, "config_hash": config_hash(cfg), "image_shape": list(_spec(icfg).shape)}
    return commit_ingest(spark, records, listing, counts, target, run_id=run_id, timings=timings, context=context,
                         staged=staged, near_dedup=near_dedup_stage(spark, cfg, icfg.near_dedup, target.output))


def image_target(cfg: AppConfig) -> IngestTarget:
    """Output contract of the image table."""
    icfg = cfg.ingest_images
    return IngestTarget(
        pipeline="ingest_images",
        output=resolve_path(cfg.paths.data_dir, icfg.output),
        quarantine=resolve_path(cfg.paths.data_dir, icfg.quarantine),
        fmt=icfg.format, delta_writer=cfg.spark.delta_writer, dedup=icfg.dedup,
        labelled=icfg.label_source != "none", fixed_labels=icfg.labels,
        source_col="path", raw_col=None, unit="images",
    )


def _spec(icfg: ImageIngestConfig) -> ImageSpec:
    return ImageSpec(icfg.size, icfg.color_mode, icfg.resize, icfg.max_pixels, icfg.max_file_bytes)


def _batch_job(cfg: AppConfig, staged: StagedWrite, run_id: str) -> ImageBatchJob:
    icfg = cfg.ingest_images
    return ImageBatchJob(_spec(icfg), icfg.split, icfg.keep_original, staged.labels, run_id, datetime.now(timezone.utc))


def _decode(files: "DataFrame", cfg: AppConfig, job: ImageBatchJob, staged: StagedWrite) -> "DataFrame":
    """One outcome row per new file. The Python workers read each listed file (through dlspark.filesystem:
    any location it opens, names as they are), decode it and write the good rows to staged files; a file that
    vanished or changed since listing is rejected with that reason; empty or oversize files are rejected from
    the listing, unread."""
    icfg = cfg.ingest_images
    listed = files.where(F.col("length").between(1, icfg.max_file_bytes)).select("path", "modification_time", "length", "label")
    # One task per core (the cached listing's partitions, see dlspark.ingest.files.LISTING_CONF): the workers
    # start one file after another (StagingArea.file_bytes), so a task can take any share, and more tasks would
    # each cost a start-up.
    process = partial(read_then, process=partial(decode_batch, job=job))
    fn = partial(stage_batches, process=process, area=staged.area)
    return listed.mapInArrow(fn, OUTCOME_SCHEMA).unionByName(_unreadable(files, icfg.max_file_bytes))


def _unreadable(files: "DataFrame", limit: int) -> "DataFrame":
    """Rejected rows, straight from the listing, for files that are not read: empty or over the size limit."""
    empty = F.col("length") == 0
    reason = F.when(empty, F.lit("empty_file")).otherwise(F.lit("file_too_large"))
    detail = F.when(empty, F.lit("file has 0 bytes")).otherwise(
        F.concat(F.col("length").cast("string"), F.lit(f" bytes > max_file_bytes={limit}; file was not read")))
    rows = files.where(empty | (F.col("length") > limit)).select(
        F.col("path").alias("record_id"), "path", "modification_time", "length", "label",
        reason.alias("reject_reason"), detail.alias("reject_detail"),
    )
    return rows.select(*[_typed(field) for field in OUTCOME_SCHEMA.split(", ")])


def _typed(field: str) -> "F.Column":
    """Column ``field`` ("name type") from ``rows`` if present, else a typed null."""
    name, dtype = field.split(" ", 1)
    if name in ("record_id", "path", "modification_time", "length", "label", "reject_reason", "reject_detail"):
        return F.col(name).cast(dtype).alias(name)
    return F.lit(None).cast(dtype).alias(name)


def _with_labels(spark: "SparkSession", decoded: "DataFrame", icfg: ImageIngestConfig, source: str, data_dir: str) -> "DataFrame":
    """Add ``label``: the parent folder's name, the labels CSV's entry (path relative to the input), or null."""
    if icfg.label_source == "folder":
        return decoded.withColumn("label", F.try_element_at(F.split(F.col("path"), "/"), F.lit(-2)))
    if icfg.label_source == "none":
        return decoded.withColumn("label", F.lit(None).cast("string"))
    return _with_csv_labels(spark, decoded, resolve_path(data_dir, str(icfg.labels_csv)), source)


def _with_csv_labels(spark: "SparkSession", decoded: "DataFrame", csv_path: str, source: str) -> "DataFrame":
    """Join labels from a CSV (path relative to the input folder, label); unmatched files get a null label."""
    labels = spark.read.option("header", "true").csv(csv_path)
    missing = {"path", "label"} - set(labels.columns)
    if missing:
        raise ValueError(f"ingest_images.labels_csv {csv_path}: needs a header with columns path,label; missing {sorted(missing)}")
    root = qualify(source).rstrip("/") + "/"
    rel = F.expr(f"substring(path, {len(root) + 1})")
    labels = labels.select(F.regexp_replace("path", r"^(\./|/)", "").alias("_rel"), "label").dropDuplicates(["_rel"])
    return decoded.withColumn("_rel", rel).join(F.broadcast(labels), on="_rel", how="left").drop("_rel")


def _empty_records(spark: "SparkSession") -> "DataFrame":
    return spark.createDataFrame([], OUTCOME_SCHEMA)
