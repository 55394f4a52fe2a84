"""Text ingest: CSV / JSON lines / Parquet with a text (and label) column -> tokenized table + quarantine.

read (new files only; malformed records kept) -> spread over the cores -> normalise, label and tokenize
in Arrow batches, the Python workers writing Parquet themselves -> dedup on the normalised text (-> near-dedup
by embeddings, ``ingest_text.near_dedup``) -> publish the files. Spark carries only one small outcome row per record. Same idempotency and
incremental rules as image ingest.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql import types as T

from dlspark.config import AppConfig, TextIngestConfig, config_hash
from dlspark.filesystem import remove
from dlspark.ingest.commit import IngestReport, IngestTarget, StagedWrite, commit_ingest, label_mapping
from dlspark.ingest.files import Sidecar, find_new_files, released_on_error
from dlspark.ingest.near_dedup import near_dedup_stage
from dlspark.ingest.reading import CHANGED
from dlspark.ingest.text_inputs import ReadableInputs, plan_inputs
from dlspark.paths import resolve_path
from dlspark.runlog import StageTimings
from dlspark.spark.connect import default_parallelism, is_connect
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
    files, counts = find_new_files(spark, source, "*", True, Sidecar(target.output), timings)
    with released_on_error(files):
        inputs = readable_inputs(files, Sidecar(target.output)) if counts.new else None
        rows = read_rows(spark, inputs, tcfg) if inputs is not None and inputs.paths else None
        staged = StagedWrite.start(target.sink(TABLE_SCHEMA), label_mapping(rows, target) if rows is not None else None,
                                   id_column="record_id")
        records = _tokenize(rows, cfg, staged, run_id) if rows is not None else spark.createDataFrame([], OUTCOME_SCHEMA)
        if inputs is not None and inputs.rejected:
            records = records.unionByName(_rejected_files(spark, inputs.rejected))
    metrics = {
        "encoding_replaced": F.sum(F.col("encoding_replaced").cast("long")),
        "truncated": F.sum(F.col("truncated").cast("long")),
        "mean_tokens": F.round(F.avg("num_tokens"), 2),
    }
    context = {"input": source, "config_hash": config_hash(cfg), "max_length": tcfg.max_length, "tokenizer": tcfg.tokenizer}
    try:
        return commit_ingest(spark, records, files, counts, target, run_id=run_id, timings=timings, context=context,
                             record_metrics=metrics, staged=staged,
                             near_dedup=near_dedup_stage(spark, cfg, tcfg.near_dedup, target.output))
    finally:
        if inputs is not None and inputs.aliases:
            remove(inputs.copy_root)


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


def readable_inputs(files: "DataFrame", sidecar: Sidecar) -> ReadableInputs:
    """What Spark's reader is given for the new ``files``: their locations, with a safe copy for a name it
    cannot open, and an outcome row for each file that is empty, vanished or changed since listing."""
    rows = files.select("path", F.unix_millis("modification_time").alias("ms"), "length").collect()
    listed = [(r["path"], datetime.fromtimestamp(r["ms"] / 1000, timezone.utc), r["length"]) for r in rows]
    return plan_inputs(listed, f"{sidecar.root}/renamed/{uuid.uuid4().hex}")


def read_rows(spark: "SparkSession", inputs: ReadableInputs, tcfg: TextIngestConfig) -> "DataFrame":
    """(record_id, source_path, text, label, malformed, read_reason, read_detail) for every input record,
    malformed ones included; the records of a file that changed since listing carry ``read_reason``."""
    df = _read(spark, list(inputs.paths), tcfg)
    _check_columns(df, tcfg)
    malformed = F.col(CORRUPT) if CORRUPT in df.columns else F.lit(None).cast("string")
    label = F.col(tcfg.label_column).cast("string") if tcfg.label_column else F.lit(None).cast("string")
    source = _real_name(F.expr("url_decode(replace(_metadata.file_path, '+', '%2B'))"), inputs.aliases)
    row = F.lpad(F.monotonically_increasing_id().cast("string"), 20, "0")
    rows = df.select(
        source.alias("source_path"), F.col(tcfg.text_column).cast("string").alias("text"), label.alias("label"),
        malformed.alias("malformed"), F.col("_metadata.file_size").alias("_size"),
        F.col("_metadata.file_modification_time").alias("_mtime"), row.alias("_row"),
    )
    listed = spark.createDataFrame(list(inputs.listed), "source_path string, _listed_mtime timestamp, _listed_size long")
    rows = rows.join(F.broadcast(listed), on="source_path", how="left")
    changed = (F.col("_size") != F.col("_listed_size")) | (
        (F.abs(F.unix_millis("_mtime") - F.unix_millis("_listed_mtime")) >= 1) & ~F.col("source_path").isin(list(inputs.aliases.values())))
    detail = F.concat(F.lit("listed with "), F.col("_listed_size").cast("string"), F.lit(" bytes, read with "),
                      F.col("_size").cast("string"), F.lit(" bytes: the file changed while being ingested; it is ingested on the next run"))
    return rows.select(
        F.concat("source_path", F.lit("#"), "_row").alias("record_id"), "source_path", "text", "label", "malformed",
        F.when(changed, F.lit(CHANGED)).alias("read_reason"), F.when(changed, detail).alias("read_detail"),
    )


def _real_name(read_path: "F.Column", aliases: dict[str, str]) -> "F.Column":
    """The listed name of the file a record was read from (``_metadata.file_path`` is URI-encoded; a safe
    copy maps back to its original)."""
    if not aliases:
        return read_path
    mapping = F.create_map(*[F.lit(x) for pair in aliases.items() for x in pair])
    return F.coalesce(F.try_element_at(mapping, read_path), read_path)


def _rejected_files(spark: "SparkSession", rejected: list[tuple[str, str, str]]) -> "DataFrame":
    """Outcome rows, straight from the listing, for files that were not read (empty, vanished, changed)."""
    names = [f.split(" ")[0] for f in OUTCOME_SCHEMA.split(", ")]
    values = [{"record_id": p, "source_path": p, "reject_reason": r, "reject_detail": d} for p, r, d in rejected]
    return spark.createDataFrame([tuple(v.get(n) for n in names) for v in values], OUTCOME_SCHEMA)


def _read(spark: "SparkSession", read_from: list[str], tcfg: TextIngestConfig) -> "DataFrame":
    reader = spark.read.option("encoding", tcfg.encoding).option("mode", "PERMISSIVE")
    if tcfg.input_format == "parquet":
        return spark.read.parquet(*read_from)
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
    Spark cannot split) is read by one task, and tokenizing costs ~50x more than moving the rows. Spark Connect
    cannot tell a DataFrame's partition count, so there the rows are always spread."""
    spark = rows.sparkSession
    cores = default_parallelism(spark)
    if not is_connect(spark) and rows.rdd.getNumPartitions() >= cores:
        return rows
    return rows.repartition(cores, "record_id")  # record ids are fixed before the shuffle: retries see the same

