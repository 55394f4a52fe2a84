"""Text ingest: CSV / JSON lines / Parquet with a text (and label) column -> tokenized table + quarantine.

read (new files only; malformed records kept) -> normalise + tokenize in Arrow batches -> label ->
dedup on the normalised text -> write. Same idempotency and incremental rules as image ingest.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql import types as T

from dlspark.config import AppConfig, TextIngestConfig, config_hash
from dlspark.ingest.commit import IngestReport, IngestTarget, commit_ingest
from dlspark.ingest.files import Sidecar, find_new_files
from dlspark.paths import resolve_path
from dlspark.runlog import StageTimings
from dlspark.text.batches import TOKENIZED_DDL, TokenizeSpec, tokenize_batches
from dlspark.text.normalize import NormalizeSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

CORRUPT = "_corrupt_record"
TABLE_COLUMNS = (
    "source_path", "text", "text_norm", "label", "label_index", "split", "sha256", "input_ids", "attention_mask",
    "num_tokens", "unknown_tokens", "truncated", "encoding_replaced",
)


class InputSchemaError(ValueError):
    """The input lacks a configured column."""


def ingest_text(spark: "SparkSession", cfg: AppConfig, run_id: str) -> IngestReport:
    """Ingest the new files under ``cfg.ingest_text.input``; returns counts and the run summary."""
    tcfg = cfg.ingest_text
    source = resolve_path(cfg.paths.data_dir, tcfg.input)
    target = text_target(cfg)
    timings = StageTimings()
    files, counts, read_from = find_new_files(spark, source, "*", True, Sidecar(target.output), timings)
    records = _tokenize(read_rows(spark, read_from, tcfg), tcfg) if counts.new else _empty_records(spark)
    metrics = {
        "encoding_replaced": F.sum(F.col("encoding_replaced").cast("long")),
        "truncated": F.sum(F.col("truncated").cast("long")),
        "mean_tokens": F.round(F.avg("num_tokens"), 2),
    }
    context = {"input": source, "config_hash": config_hash(cfg), "max_length": tcfg.max_length, "tokenizer": tcfg.tokenizer}
    return commit_ingest(spark, records, files, counts, target, run_id=run_id, timings=timings, context=context,
                         record_metrics=metrics)


def text_target(cfg: AppConfig) -> IngestTarget:
    """Output contract of the text table."""
    tcfg = cfg.ingest_text
    return IngestTarget(
        pipeline="ingest_text",
        output=resolve_path(cfg.paths.data_dir, tcfg.output),
        quarantine=resolve_path(cfg.paths.data_dir, tcfg.quarantine),
        fmt=tcfg.format, delta_writer=cfg.spark.delta_writer, dedup=tcfg.dedup,
        labelled=tcfg.label_column is not None, fixed_labels=tcfg.labels,
        columns=TABLE_COLUMNS, source_col="source_path", raw_col="raw_record", unit="texts",
        row_bytes=tcfg.max_length * 5 + 600,
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


def _tokenize(rows: "DataFrame", tcfg: TextIngestConfig) -> "DataFrame":
    spec = TokenizeSpec(
        tokenizer=tcfg.tokenizer, max_length=tcfg.max_length, split=tcfg.split,
        normalize=NormalizeSpec(tcfg.lowercase, tcfg.mask_urls, tcfg.mask_mentions, tcfg.url_token, tcfg.mention_token),
    )
    out = rows.mapInArrow(partial(tokenize_batches, spec=spec), TOKENIZED_DDL)
    return out.withColumn("raw_record", F.coalesce(F.col("malformed"), F.col("text")))


def _empty_records(spark: "SparkSession") -> "DataFrame":
    return spark.createDataFrame([], TOKENIZED_DDL + ", raw_record string")


def _as_list(read_from: str | list[str]) -> list[str]:
    return [read_from] if isinstance(read_from, str) else read_from
