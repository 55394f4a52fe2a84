"""Embeddings pipeline: a registered torch model's head input for every row of a table -> an embeddings table
(incremental: rows this model version already embedded, by ``sha256`` or ``record_id``, are skipped) and a faiss
HNSW index of all the version's vectors, saved beside the table.

Index folder: ``<embed.output>/_index/<model name>-v<version>/`` (see :mod:`dlspark.embeddings.index_store`). A
rerun that embedded no new rows keeps the index; new rows rebuild it, so it always covers the table's rows of that
version.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from dlspark.config import AppConfig, ConfigError
from dlspark.embeddings.index_store import MANIFEST, IndexMissing, Neighbour, VectorIndex, index_location
from dlspark.embeddings.spark_embed import build_index_shards, embed_dataframe
from dlspark.inference.model import load_model
from dlspark.inference.spark_scoring import source_torch_spec
from dlspark.paths import resolve_path
from dlspark.tables import read_table, table_exists, write_table
from dlspark.tracking import resolve_tracking

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
KEYS = ("sha256", "record_id")


@dataclass(frozen=True)
class EmbedReport:
    run_id: str
    model: str
    input_rows: int
    embedded: int          # new rows written this run (refused ones included, with their error)
    refused: int
    skipped: int           # rows this model version had embedded before
    vectors: int           # vectors of this model version in the table (= in the index)
    output: str
    index_dir: str | None

    def describe(self) -> str:
        index = f"; index {self.index_dir} ({self.vectors} vectors)" if self.index_dir else ""
        return (f"{self.model}: {self.embedded} new rows embedded ({self.refused} refused), {self.skipped} already there, "
                f"of {self.input_rows}; table {self.output}{index}")


def embed(spark: SparkSession, cfg: AppConfig, run_id: str) -> EmbedReport:
    ecfg = cfg.embed
    df = read_table(spark, resolve_path(cfg.paths.data_dir, cfg.embed_input), fmt=cfg.inference.input_format).df
    if ecfg.split:
        if "split" not in df.columns:
            raise ConfigError(f"embed.split={ecfg.split}: the input has no split column; set embed.split: null")
        df = df.where(F.col("split") == ecfg.split)
    key = next((k for k in KEYS if k in df.columns), None)
    if key is None:
        raise ConfigError(f"embeddings need a row key to be incremental and searchable: the input has none of {KEYS}")
    passthrough = list(dict.fromkeys([key, *(c for c in ("split", "label", "source_path") if c in df.columns)]))
    bundle, spec = source_torch_spec(spark, cfg, _model_uri(cfg), passthrough=passthrough, batch_size=ecfg.batch_size,
                                     what="embed")
    output, index_dir = index_location(cfg, bundle.ref.name, bundle.ref.version)
    input_rows = df.count()
    done = _done_keys(spark, output, cfg, key, bundle.ref.uri)
    todo = df.join(done, on=key, how="left_anti") if done is not None else df
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    new = (embed_dataframe(todo, spec).withColumn("model_uri", F.lit(bundle.ref.uri)).withColumn("run_id", F.lit(run_id))
           .withColumn("embedded_at", F.lit(now)))
    write_table(new, output, fmt=cfg.inference.format, mode="append", delta_writer=cfg.spark.delta_writer)
    mine = read_table(spark, output, fmt=cfg.inference.format).df.where(F.col("model_uri") == bundle.ref.uri)
    written = mine.where(F.col("run_id") == run_id).agg(F.count(F.lit(1)).alias("n"), F.count("embedding").alias("ok")).first()
    embedded, refused = int(written["n"]), int(written["n"]) - int(written["ok"])
    if ecfg.index and (embedded or not (index_dir / MANIFEST).is_file()):
        vectors = build_index(mine, key, index_dir, cfg, bundle.ref.label)
    else:
        vectors = mine.where(F.col("embedding").isNotNull()).count()
    report = EmbedReport(run_id, bundle.ref.label, input_rows, embedded, refused, input_rows - embedded, vectors, output,
                         str(index_dir) if ecfg.index else None)
    log.info("%s", report.describe())
    return report


def _done_keys(spark: SparkSession, output: str, cfg: AppConfig, key: str, model_uri: str) -> DataFrame | None:
    if not table_exists(output, fmt=cfg.inference.format):
        return None
    table = read_table(spark, output, fmt=cfg.inference.format).df
    if key not in table.columns:
        raise ConfigError(f"{output} holds embeddings keyed otherwise than by {key!r}; set embed.output to another table")
    return table.where(F.col("model_uri") == model_uri).select(key).distinct()


def _model_uri(cfg: AppConfig) -> str:
    return cfg.model_uri(cfg.embed.model or cfg.inference.model, cfg.inference.alias)


def _indexed(cfg: AppConfig) -> tuple[Any, str, VectorIndex]:
    """(model version, embeddings table, its loaded index) of the configured model; the index must exist."""
    ref = load_model(resolve_tracking(cfg.mlflow, cfg.paths.data_dir), _model_uri(cfg), runtime="source").ref
    output, folder = index_location(cfg, ref.name, ref.version)
    try:
        return ref, output, VectorIndex.load(folder)
    except IndexMissing as exc:
        raise ConfigError(f"{ref.label}: {exc}") from exc


def build_index(mine: DataFrame, key: str, index_dir: Path, cfg: AppConfig, model: str) -> int:
    """The HNSW index of every vector in ``mine`` (one model version), built per partition on the executors
    (``embed.shard_rows`` vectors a shard) and written to ``index_dir``; its size."""
    label = F.col("label") if "label" in mine.columns else F.lit(None).cast("string").alias("label")
    vectors = mine.where(F.col("embedding").isNotNull()).select(key, "embedding", label).dropDuplicates([key])
    index = build_index_shards(vectors, key, cfg.embed.shard_rows, cfg.embed.hnsw_m, cfg.embed.ef_construction,
                               {"model": model})
    if index is None:
        log.warning("no vectors of %s to index", model)
        return 0
    index.save(index_dir)
    log.info("index of %d vectors of %s in %d shard(s): %s", len(index), model, len(index.shards), index_dir)
    return len(index)


def similar(spark: SparkSession, cfg: AppConfig, key: str | None, k: int = 5) -> tuple[str, list[Neighbour]]:
    """The ``k`` rows nearest to row ``key`` (None: the first test row by key) in the model version's index, itself
    excluded: ``(key, neighbours)``.

    Raises
    ------
    ConfigError
        When the version has no index yet (run the embed job) or the key has no vector.
    """
    ref, output, index = _indexed(cfg)
    if key is None:
        table = read_table(spark, output, fmt=cfg.inference.format).df.where(F.col("model_uri") == ref.uri)
        test = table.where(F.col("split") == "test") if "split" in table.columns else table
        first = test.where(F.col("embedding").isNotNull()).select(index.key_column).orderBy(index.key_column).first()
        if first is None:
            raise ConfigError(f"{output} has no embedded rows of {ref.label}")
        key = str(first[0])
    if key not in index.positions:
        raise ConfigError(f"row {key!r} has no embedding of {ref.label} in {output}")
    return key, index.nearest(index.vector(key)[None, :], k, exclude=[key])[0]


def find_duplicates(spark: SparkSession, cfg: AppConfig, threshold: float, k: int = 10) -> tuple[str, int]:
    """Near-duplicate pairs of the model version's rows: every pair among each row's ``k`` nearest (from the index)
    with cosine similarity >= ``threshold``, each pair once (``key_a < key_b``), written to ``<output>/_duplicates``
    (replaced per model version). Returns (table path, pairs)."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"--duplicates: the similarity threshold must be in (0, 1], got {threshold}")
    ref, output, index = _indexed(cfg)
    pairs = index.duplicate_pairs(threshold, k)
    rows = [(a, b, s, ref.uri) for (a, b), s in sorted(pairs.items())]
    path = f"{output.rstrip('/')}/_duplicates/{ref.name}-v{ref.version}"
    df = spark.createDataFrame(rows, "key_a string, key_b string, similarity double, model_uri string")
    write_table(df, path, fmt=cfg.inference.format, mode="overwrite", delta_writer=cfg.spark.delta_writer)
    log.info("%d near-duplicate pairs (cosine >= %s, %d nearest each) among %d rows of %s: %s", len(rows), threshold, k,
             len(index), ref.label, path)
    return path, len(rows)
