"""Image ingest: a folder tree of image files -> fixed-shape uint8 tensor table + quarantine table.

read (binaryFile, new files only) -> decode/resize in Arrow batches -> label -> dedup -> write.
Reruns are idempotent and incremental (see ``dlspark.ingest``).
"""
from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from dlspark.config import AppConfig, ImageIngestConfig, config_hash
from dlspark.images import ImageSpec
from dlspark.images.batches import DECODED_DDL, decode_batches
from dlspark.ingest.commit import IngestReport, IngestTarget, commit_ingest
from dlspark.ingest.files import (
    Sidecar,
    find_new_files,
    qualified_uri,
    read_contents,
)
from dlspark.paths import resolve_path
from dlspark.runlog import StageTimings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "path", "label", "label_index", "split", "sha256", "pixels", "shape", "width", "height", "format",
    "modification_time AS source_modification_time",
)


def ingest_images(spark: "SparkSession", cfg: AppConfig, run_id: str) -> IngestReport:
    """Ingest the new files under ``cfg.ingest_images.input``; returns counts and the run summary."""
    icfg = cfg.ingest_images
    source = resolve_path(cfg.paths.data_dir, icfg.input)
    target = image_target(cfg)
    timings = StageTimings()
    files, counts, read_from = find_new_files(spark, source, icfg.glob, icfg.recursive, Sidecar(target.output), timings)
    records = _decode(spark, read_from, files, cfg) if counts.new else _empty_records(spark)
    context = {"input": source, "config_hash": config_hash(cfg), "image_shape": list(_spec(icfg).shape)}
    return commit_ingest(spark, records, files, counts, target, run_id=run_id, timings=timings, context=context)


def image_target(cfg: AppConfig) -> IngestTarget:
    """Output contract of the image table."""
    icfg = cfg.ingest_images
    columns = list(TABLE_COLUMNS) + (["original"] if icfg.keep_original else [])
    return IngestTarget(
        pipeline="ingest_images",
        output=resolve_path(cfg.paths.data_dir, icfg.output),
        quarantine=resolve_path(cfg.paths.data_dir, icfg.quarantine),
        fmt=icfg.format, delta_writer=cfg.spark.delta_writer, dedup=icfg.dedup,
        labelled=icfg.label_source != "none", fixed_labels=icfg.labels,
        columns=columns, source_col="path", raw_col=None, unit="images",
        row_bytes=icfg.size[0] * icfg.size[1] * (1 if icfg.color_mode == "L" else 3) + 300,
        storage="DISK_ONLY",
    )


def _spec(icfg: ImageIngestConfig) -> ImageSpec:
    return ImageSpec(icfg.size, icfg.color_mode, icfg.resize, icfg.max_pixels, icfg.max_file_bytes)


def _decode(spark, read_from, files: "DataFrame", cfg: AppConfig) -> "DataFrame":  # noqa: ANN001
    """Decoded rows for every new file; oversize files are rejected from the listing, unread."""
    icfg, data_dir = cfg.ingest_images, cfg.paths.data_dir
    source = resolve_path(data_dir, icfg.input)
    contents = read_contents(spark, read_from, glob=icfg.glob, recursive=icfg.recursive)
    contents = contents.where(F.col("length").between(1, icfg.max_file_bytes))
    fn = partial(decode_batches, spec=_spec(icfg), split=icfg.split, keep_original=icfg.keep_original)
    decoded = contents.mapInArrow(fn, DECODED_DDL).unionByName(_unreadable(files, icfg.max_file_bytes))
    return _with_labels(spark, decoded, icfg, source, data_dir)


def _unreadable(files: "DataFrame", limit: int) -> "DataFrame":
    """Rejected rows, straight from the listing, for files that are not read: empty or over the size limit."""
    empty = F.col("length") == 0
    reason = F.when(empty, F.lit("empty_file")).otherwise(F.lit("file_too_large"))
    detail = F.when(empty, F.lit("file has 0 bytes")).otherwise(
        F.concat(F.col("length").cast("string"), F.lit(f" bytes > max_file_bytes={limit}; file was not read")))
    rows = files.where(empty | (F.col("length") > limit)).select(
        F.col("path").alias("record_id"), "path", "modification_time", "length",
        reason.alias("reject_reason"), detail.alias("reject_detail"),
    )
    return rows.select(*[_typed(field) for field in DECODED_DDL.split(", ")])


def _typed(field: str) -> "F.Column":
    """Column ``field`` ("name type") from ``rows`` if present, else a typed null."""
    name, dtype = field.split(" ", 1)
    if name in ("record_id", "path", "modification_time", "length", "reject_reason", "reject_detail"):
        return F.col(name).cast(dtype).alias(name)
    return F.lit(None).cast(dtype).alias(name)


def _with_labels(spark: "SparkSession", decoded: "DataFrame", icfg: ImageIngestConfig, source: str, data_dir: str) -> "DataFrame":
    """Add ``label``: the parent folder's name, the labels CSV's entry (path relative to the input), or null."""
    if icfg.label_source == "folder":
        return decoded.withColumn("label", F.element_at(F.split(F.col("path"), "/"), -2))
    if icfg.label_source == "none":
        return decoded.withColumn("label", F.lit(None).cast("string"))
    return _with_csv_labels(spark, decoded, resolve_path(data_dir, str(icfg.labels_csv)), source)


def _with_csv_labels(spark: "SparkSession", decoded: "DataFrame", csv_path: str, source: str) -> "DataFrame":
    """Join labels from a CSV (path relative to the input folder, label); unmatched files get a null label."""
    labels = spark.read.option("header", "true").csv(csv_path)
    missing = {"path", "label"} - set(labels.columns)
    if missing:
        raise ValueError(f"ingest_images.labels_csv {csv_path}: needs a header with columns path,label; missing {sorted(missing)}")
    root = qualified_uri(spark, source).rstrip("/") + "/"
    rel = F.expr(f"substring(path, {len(root) + 1})")
    labels = labels.select(F.regexp_replace("path", r"^(\./|/)", "").alias("_rel"), "label").dropDuplicates(["_rel"])
    return decoded.withColumn("_rel", rel).join(F.broadcast(labels), on="_rel", how="left").drop("_rel")


def _empty_records(spark: "SparkSession") -> "DataFrame":
    return spark.createDataFrame([], DECODED_DDL + ", label string")
