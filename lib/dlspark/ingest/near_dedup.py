"""Ingest's optional near-dedup stage (``ingest_images.near_dedup`` / ``ingest_text.near_dedup``).

After exact dedup and before publishing, the rows about to be written are read back from this run's staged files,
embedded on the executors by the configured model (:func:`dlspark.embeddings.spark_embed.embed_dataframe`, as
``jobs/embed.py`` does), and judged on the driver by :func:`dlspark.embeddings.dedup.near_duplicates` against the
model version's saved index (when ``jobs/embed.py`` built one) and each other. A near-duplicate becomes a
``duplicate`` outcome (so it is dropped from the staged files and counted with the duplicates: counts still
reconcile) and gets a row in ``<output>/_dlspark/near_duplicates``: which record, which row it repeats, the
similarity, the model and the run. The driver holds one vector per new row (~0.5 KB for a 128-dim CNN embedding,
1.5 KB for MiniLM's 384), so one run of 1M new texts needs ~1.5 GB of driver memory.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql import functions as F

from dlspark.config import AppConfig, ConfigError, NearDedupConfig
from dlspark.embeddings.dedup import near_duplicates
from dlspark.embeddings.index_store import IndexMissing, VectorIndex, index_location
from dlspark.ingest.files import Sidecar
from dlspark.ingest.outcome import DUPLICATE, WRITTEN
from dlspark.tables import write_table
from dlspark.tables.staged import STAGED_FILE

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

MARKS_DDL = "record_id string, near_duplicate_of string, near_similarity double"


@dataclass(frozen=True)
class NearDedup:
    """The stage as ``commit_ingest`` calls it: ``(classified outcome rows, staged id column, run id)`` ->
    (outcome rows with near-duplicates marked, summary)."""

    spark: SparkSession
    cfg: AppConfig
    settings: NearDedupConfig
    table: str                       # the ingest output table (its sidecar gets the near-duplicates list)

    def __call__(self, classified: DataFrame, id_column: str, run_id: str) -> tuple[DataFrame, dict[str, Any]]:
        return mark_near_duplicates(self, classified, id_column, run_id)


def near_dedup_stage(spark: SparkSession, cfg: AppConfig, settings: NearDedupConfig, table: str) -> NearDedup | None:
    """The stage for one ingest's ``near_dedup`` settings; None when ``near_dedup.model`` is null (off)."""
    if settings.model is None:
        return None
    return NearDedup(spark, cfg, settings, table)


def mark_near_duplicates(stage: NearDedup, classified: DataFrame, id_column: str,
                         run_id: str) -> tuple[DataFrame, dict[str, Any]]:
    from dlspark.embeddings.spark_embed import embed_dataframe
    from dlspark.inference.spark_scoring import source_torch_spec

    spark, settings = stage.spark, stage.settings
    files = [r[0] for r in classified.where((F.col("outcome") == WRITTEN) & F.col(STAGED_FILE).isNotNull())
             .select(STAGED_FILE).distinct().collect()]
    if not files:
        return classified, {"near_duplicates": 0}
    uri = stage.cfg.model_uri(settings.model, stage.cfg.inference.alias)
    bundle, spec = source_torch_spec(spark, stage.cfg, uri, passthrough=[id_column, "sha256"],
                                     batch_size=stage.cfg.embed.batch_size, what="near_dedup")
    staged_rows = spark.read.parquet(*files)
    vectors = (embed_dataframe(staged_rows, spec).where(F.col("embedding").isNotNull())
               .select(id_column, "sha256", "embedding").orderBy(id_column).collect())
    existing = _saved_index(stage.cfg, bundle.ref)
    found = near_duplicates([r["sha256"] for r in vectors], np.asarray([r["embedding"] for r in vectors], np.float32)
                            if vectors else np.zeros((0, 1), np.float32), settings.threshold, existing, settings.neighbours)
    summary = {"near_duplicates": len(found), "model": bundle.ref.label, "threshold": settings.threshold,
               "of_indexed_rows": sum(d.in_index for d in found), "embedded": len(vectors),
               "index": f"{len(existing)} rows" if existing is not None else None}
    log.info("near-dedup by %s (cosine >= %s): %d of %d new rows repeat %s", bundle.ref.label, settings.threshold,
             len(found), len(vectors), "indexed or earlier rows" if existing is not None else "earlier rows of this run "
             "(no index of this version: run jobs/embed.py to compare with the table too)")
    if not found:
        return classified, summary
    marks = spark.createDataFrame([(vectors[d.position][id_column], d.duplicate_of, d.similarity) for d in found], MARKS_DDL)
    marked = (classified.join(F.broadcast(marks), on="record_id", how="left")
              .withColumn("duplicate_of", F.coalesce("duplicate_of", "near_duplicate_of"))
              .withColumn("outcome", F.when(F.col("near_duplicate_of").isNotNull(), F.lit(DUPLICATE)).otherwise(F.col("outcome"))))
    listed = (marked.where(F.col("near_duplicate_of").isNotNull())
              .select("record_id", "sha256", F.col("near_duplicate_of").alias("duplicate_of_sha256"),
                      F.col("near_similarity").alias("similarity"), F.lit(bundle.ref.uri).alias("model_uri"),
                      F.lit(run_id).alias("ingest_run_id")))
    written = write_table(listed.coalesce(1), near_duplicates_table(stage.table), fmt="parquet", mode="append")
    summary["table"] = written.path
    return marked.drop("near_duplicate_of", "near_similarity"), summary


def near_duplicates_table(table: str) -> str:
    """Where an ingest output table's near-duplicates are listed (one row per dropped record)."""
    return f"{Sidecar(table).root}/near_duplicates"


def _saved_index(cfg: AppConfig, ref: Any) -> VectorIndex | None:
    try:
        return VectorIndex.load(index_location(cfg, ref.name, ref.version)[1])
    except IndexMissing:
        return None
    except ConfigError as exc:            # the embeddings table is not local: judge within the run only
        log.warning("near-dedup: %s; comparing this run's rows with each other only", exc)
        return None
