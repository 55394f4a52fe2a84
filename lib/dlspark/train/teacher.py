"""Distillation's input: the training table with the teacher's logits beside every row, scored once by batch inference.

The teacher (a registered model, on the runtime ``inference.runtime`` picks) scores the rows the student trains,
validates and tests on (``mapInArrow``, the model shipped to executors as for batch inference); the table is the
training table's columns plus ``teacher_logits`` (the log of the teacher's probabilities: softmax of them is the
teacher's distribution at any temperature, as with its raw logits). It is written once per (teacher version,
training-table fingerprint) and reused by every later run and epoch, so the student never runs the teacher.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from dlspark.config import AppConfig, ConfigError
from dlspark.inference.model import ModelBundle, load_model
from dlspark.inference.spark_scoring import score_dataframe, scoring_spec, ship_model
from dlspark.paths import resolve_path
from dlspark.runlog import read_json, write_json
from dlspark.spark.connect import default_parallelism
from dlspark.tables import TableSnapshot, read_table, write_table
from dlspark.tracking import resolve_tracking

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TEACHER_COLUMN = "teacher_logits"
MARKER = "_dlspark_teacher.json"
TINY = 1e-30          # probabilities are clamped here before the log: a float32 probability can underflow to 0


@dataclass(frozen=True)
class TeacherTable:
    """The snapshot to train on and where its logits came from (for the run's tags)."""

    snapshot: TableSnapshot
    teacher: ModelBundle
    rows: int
    reused: bool


def teacher_table(spark: SparkSession, cfg: AppConfig, source: TableSnapshot, labels: tuple[str, ...],
                  label_map: dict[str, int] | None) -> TeacherTable:
    """The training table with ``teacher_logits``: read back when this teacher version already scored this table,
    else scored now (rows whose label the student does not learn are left out)."""
    d = cfg.train.distill
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    teacher = load_model(target, cfg.model_uri(d.teacher, "champion"), runtime=cfg.inference.runtime)
    check_teacher(teacher, cfg, labels)
    path = resolve_path(cfg.paths.data_dir, cfg.distill_table(teacher.source_ref))
    wanted = {"teacher": teacher.source_ref.uri, "source_fingerprint": source.fingerprint, "layout": "shuffled"}
    marker = read_json(f"{path.rstrip('/')}/{MARKER}") or {}
    if {k: marker.get(k) for k in wanted} == wanted:
        log.info("distillation: reusing %s's logits in %s (%d rows)", teacher.source_ref.label, path, marker.get("rows", 0))
        return TeacherTable(read_table(spark, path, fmt="parquet"), teacher, int(marker.get("rows", 0)), reused=True)
    rows = _learnable(source.df, label_map)
    log.info("distillation: %s (%s) scores the training table into %s", teacher.source_ref.label, teacher.runtime_label, path)
    scored = shuffled(with_teacher_logits(spark, rows, cfg, teacher), cfg.train.seed, default_parallelism(spark))
    result = write_table(scored, path, fmt="parquet", mode="overwrite", partition_by=["split"])
    snapshot = read_table(spark, path, fmt="parquet")
    failed = snapshot.df.where(F.col(TEACHER_COLUMN).isNull()).count()
    if failed:
        raise ConfigError(f"the teacher {teacher.source_ref.label} could not score {failed} rows of {source.path} (their "
                          f"inference error is in the 'error' column of a batch-inference run); fix or quarantine them")
    write_json(f"{path.rstrip('/')}/{MARKER}", {**wanted, "rows": result.rows, "runtime": teacher.runtime_label})
    return TeacherTable(snapshot, teacher, int(result.rows), reused=False)


def with_teacher_logits(spark: SparkSession, rows: DataFrame, cfg: AppConfig, teacher: ModelBundle) -> DataFrame:
    """``rows`` (every column kept) plus ``teacher_logits`` array<float> (null where the teacher had an error)."""
    icfg = cfg.inference
    spec = scoring_spec(teacher, passthrough=tuple(rows.columns), batch_size=icfg.batch_size, top_k=0, device=icfg.device,
                        amp=icfg.amp, max_batch_tokens=icfg.max_batch_tokens)
    scored = score_dataframe(rows, ship_model(spark, spec))
    logits = F.transform("probabilities", lambda p: F.log(F.greatest(p, F.lit(TINY)))).cast("array<float>")
    return scored.select(*rows.columns, logits.alias(TEACHER_COLUMN))


def shuffled(df: DataFrame, seed: int, partitions: int) -> DataFrame:
    """Rows in a random order: ingest writes a split class folder after class folder, and a student reading a few
    big class-sorted files saw one class at a time (the feeder's shuffle buffer is smaller than a class): a Fashion-MNIST
    student reached 0.81 train but 0.44 val accuracy. Hash partitioning by a random key, then a random order within
    each partition (no sampling job, so the teacher scores each row once); ``df`` has a ``split`` column."""
    key = F.rand(seed)   # sorted by split first: the partitioned write needs that order and would otherwise sort again
    return df.repartition(max(2, partitions), key).sortWithinPartitions("split", F.rand(seed + 1))


def check_teacher(teacher: ModelBundle, cfg: AppConfig, labels: tuple[str, ...]) -> None:
    """The teacher must read the same inputs and predict the same classes, in the same order, as the student."""
    kind = "image" if cfg.train.task == "image_classification" else "text"
    if teacher.kind != kind or tuple(teacher.labels) != tuple(labels):
        raise ConfigError(f"train.distill.teacher {teacher.source_ref.label} is a {teacher.kind} model of classes "
                          f"{list(teacher.labels)}, but the student learns {kind} classes {list(labels)}: choose a "
                          f"teacher trained on the same task and labels (e.g. models:/{cfg.registered_model}@champion)")


def _learnable(df: DataFrame, label_map: dict[str, int] | None) -> DataFrame:
    """Rows whose label the student learns (all rows when targets come from ``label_index``)."""
    return df if not label_map else df.where(F.col("label").isin(list(label_map)))
