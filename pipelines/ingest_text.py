"""Text ingest: CSV / JSON lines / Parquet with a text (and label) column -> tokenized table + quarantine.

read (new files only; malformed records kept) -> spread over the cores -> normalise, label and tokenize
in Arrow batches, the Python workers writing Parquet themselves -> dedup on the normalised text ->
publish the files. Spark carries only one small outcome row per record. Same idempotency and
incremental rules as image ingest.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql import types as T

from dlspark.config import AppConfig, TextIngestConfig, config_hash
from dlspark.ingest.commit import IngestReport, IngestTarget, StagedWrite, commit_ingest, label_mapping
from dlspark.ingest.files import Sidecar, find_new_files, released_on_error
from dlspark.paths import resolve_path
from dlspark.runlog import StageTimings
from dlspark.tables.staged import stage_batches, staged_outcome_ddl
from dlspark.text.batches import OUTCOME_DDL, TABLE_SCHEMA, TextBatchJob, TokenizeSpec, tokenize_table_batch
from dlspark.text.normalize import NormalizeSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

CORRUPT = "_corrupt_record"
OUTCOME_SCHEMA = staged_outcome_ddl(OUTCOME_DDL)


class InputSchemaError(ValueError):
    """The input lacks a configured column."""


def ingest_text(spark: "SparkSession", cfg: AppConfig, run_id: str) -> IngestReport:
    """Ingest the new files under ``cfg.ingest_text.input``; returns counts and the run summary."""
    tcfg = cfg.ingest_text
    source = resolve_path(cfg.paths.data_dir, tcfg.input)
    target = text_target(cfg)
    timings = StageTimings()
    files, counts, read_from = find_new_files(spark, source, "*", True, Sidecar(target.output), timings)
    with released_on_error(files):
        rows = read_rows(spark, read_from, tcfg) if counts.new else None
        staged = StagedWrite.start(target.sink(TABLE_SCHEMA), label_mapping(rows, target) if rows is not None else None,
                                   id_column="record_id")
        records = _tokenize(rows, cfg, staged, run_id) if rows is not None else spark.createDataFrame([], OUTCOME_SCHEMA)
    metrics = {
        "encoding_replaced": F.sum(F.col("encoding_replaced").cast("long")),
        "truncated": F.sum(F.col("truncated").cast("long")),
        "mean_tokens": F.round(F.avg("num_tokens"), 2),
    }
    context = {"input": source, "config_hash": config_hash(cfg), "max_length": tcfg.max_length, "tokenizer": tcfg.tokenizer}
    return commit_ingest(spark, records, files, counts, target, run_id=run_id, timings=timings, context=context,
                         record_metrics=metrics, staged=staged)


def text_target(cfg: AppConfig) -> IngestTarget:
    """Output contract of the text table."""
    tcfg = cfg.ingest_text
    return IngestTarget(
        pipeline="ingest_text",
        output=resolve_path(cfg.paths.data_dir, tcfg.output),
        quarantine=resolve_path(cfg.paths.data_dir, tcfg.quarantine),
        fmt=tcfg.format, delta_writer=cfg.spark.delta_writer, dedup=tcfg.dedup,
        labelled=tcfg.label_column is not None, fixed_labels=tcfg.labels,
        source_col="source_path", raw_col="raw_record", unit="texts",
    )


def read_rows(spark: "SparkSession", read_from: str | list[str], tcfg: TextIngestConfig) -> "DataFrame":
    """(record_id, source_path, text, label, malformed) for every input record, malformed ones included."""
    df = _read(spark, read_from, tcfg)
    _check_columns(df, tcfg)
    malformed = F.col(CORRUPT) if CORRUPT in df.columns else F.lit(None).cast("string")
    label = F.col(tcfg.label_column).cast("string") if tcfg.label_column else F.lit(None).cast("string")
    source = F.col("_metadata.file_path")
    row = F.lpad(F.monotonically_increasing_id().cast("string"), 20, "0")
    return df.select(
        F.concat(source, F.lit("#"), row).alias("record_id"),
        source.alias("source_path"),
        F.col(tcfg.text_column).cast("string").alias("text"),
        label.alias("label"),
        malformed.alias("malformed"),
    )


def _read(spark: "SparkSession", read_from: str | list[str], tcfg: TextIngestConfig) -> "DataFrame":
    reader = spark.read.option("encoding", tcfg.encoding).option("mode", "PERMISSIVE")
    if tcfg.input_format == "parquet":
        return spark.read.parquet(*_as_list(read_from))
    if tcfg.input_format == "jsonl":
        inferred = reader.json(read_from).schema
        return reader.schema(_with_corrupt(inferred)).option("columnNameOfCorruptRecord", CORRUPT).json(read_from)
    header = reader.option("header", "true").csv(read_from).schema
    schema = _with_corrupt(T.StructType([T.StructField(f.name, T.StringType()) for f in header]))
    return (reader.option("header", "true").option("multiLine", "true").option("escape", '"')
            .option("columnNameOfCorruptRecord", CORRUPT).schema(schema).csv(read_from))


def _with_corrupt(schema: T.StructType) -> T.StructType:
    if CORRUPT in schema.fieldNames():
        return schema
    return T.StructType(list(schema.fields) + [T.StructField(CORRUPT, T.StringType())])


def _check_columns(df: "DataFrame", tcfg: TextIngestConfig) -> None:
    wanted = {"ingest_text.text_column": tcfg.text_column, "ingest_text.label_column": tcfg.label_column}
    available = [c for c in df.columns if c != CORRUPT]
    for key, name in wanted.items():
        if name is not None and name not in available:
            raise InputSchemaError(f"{key}={name!r} is not a column of the input; available columns: {available}")


def _tokenize(rows: "DataFrame", cfg: AppConfig, staged: StagedWrite, run_id: str) -> "DataFrame":
    """One outcome row per record; the Python workers write the good records to staged files."""
    tcfg = cfg.ingest_text
    spec = TokenizeSpec(
        tokenizer=tcfg.tokenizer, max_length=tcfg.max_length, split=tcfg.split,
        normalize=NormalizeSpec(tcfg.lowercase, tcfg.mask_urls, tcfg.mask_mentions, tcfg.url_token, tcfg.mention_token),
    )
    job = TextBatchJob(spec, staged.labels, run_id, datetime.now(timezone.utc))
    fn = partial(stage_batches, process=partial(tokenize_table_batch, job=job), area=staged.area)
    return _spread(rows).mapInArrow(fn, OUTCOME_SCHEMA)


def _spread(rows: "DataFrame") -> "DataFrame":
    """``rows`` over at least one partition per core: one CSV or JSON file (or a multi-line CSV, which
    Spark cannot split) is read by one task, and tokenizing costs ~50x more than moving the rows."""
    cores = rows.sparkSession.sparkContext.defaultParallelism
    if rows.rdd.getNumPartitions() >= cores:
        return rows
    return rows.repartition(cores, "record_id")  # record ids are fixed before the shuffle: retries see the same


def _as_list(read_from: str | list[str]) -> list[str]:
    return [read_from] if isinstance(read_from, str) else read_from
