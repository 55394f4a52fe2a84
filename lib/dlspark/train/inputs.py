"""What a training run reads, resolved once on the driver: the class names and label map from the ingest
table's sidecar, and one :class:`~dlspark.feed.FeedSpec` per split for the configured feeder (arrow: the snapshot's
files; petastorm: ``make_spark_converter``). Shared by ``pipelines/train.py`` and ``pipelines/tune.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from dlspark.config import AppConfig
from dlspark.feed import FeedSpec, image_normalization, make_spec, petastorm_spec, split_files
from dlspark.ingest.files import Sidecar
from dlspark.paths import resolve_path
from dlspark.runlog import read_json
from dlspark.tables import TableSnapshot

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPLITS = ("train", "val", "test")


class TrainInputError(ValueError):
    """The training table is missing, empty for a split, or lacks the label mapping."""


def training_labels(cfg: AppConfig, table_uri: str) -> tuple[tuple[str, ...], dict[str, int] | None]:
    """(class names by target index, label -> target map for the feeder; None = the table's label_index)."""
    stored = (read_json(Sidecar(table_uri).labels) or {}).get("labels")
    if not stored:
        raise TrainInputError(f"{Sidecar(table_uri).labels} is missing: train.table={cfg.train.table!r} is not an ingest "
                              "output table (run jobs/ingest_images.py or jobs/ingest_text.py first)")
    if cfg.train.task == "image_classification":
        return tuple(sorted(stored, key=stored.get)), None
    return sentiment_labels(cfg, stored)


def sentiment_labels(cfg: AppConfig, stored: dict[str, int]) -> tuple[tuple[str, ...], dict[str, int]]:
    """The binary task's classes (negative=0, positive=1) and map; ``neutral`` dropped or folded in by config."""
    s = cfg.train.sentiment
    missing = [name for name in (s.negative_label, s.positive_label) if name not in stored]
    if missing:
        raise TrainInputError(f"train.sentiment labels {missing} are not in the table's labels {sorted(stored)}; "
                              "set train.sentiment.positive_label/negative_label")
    mapping = {s.negative_label: 0, s.positive_label: 1}
    if s.neutral != "drop" and s.neutral_label in stored:
        mapping[s.neutral_label] = mapping[s.negative_label if s.neutral == "negative" else s.positive_label]
    return (s.negative_label, s.positive_label), mapping


def feed_specs(spark: "SparkSession", cfg: AppConfig, snapshot: TableSnapshot, label_map: dict[str, int] | None,
               teacher_column: str | None = None) -> dict[str, FeedSpec]:
    """One FeedSpec per split of the snapshot, for the configured feeder (``teacher_column``: distillation's logits)."""
    tcfg = cfg.train
    kind = "image" if tcfg.task == "image_classification" else "text"
    shape_or_length = _input_shape(snapshot, kind)
    fields: dict[str, Any] = {"image_shape": shape_or_length} if kind == "image" else {"max_length": shape_or_length}
    files = {split: _split_files(snapshot, split) for split in SPLITS}
    if kind == "image":
        fields["normalize"] = image_normalization(files["train"], shape_or_length)
    common = {"kind": kind, "seed": tcfg.seed, "limit_rows": tcfg.limit_rows, "label_map": label_map, **fields}
    if tcfg.feed.feeder == "petastorm":
        cache = resolve_path(cfg.paths.data_dir, tcfg.feed.petastorm_cache_dir)
        return {split: petastorm_spec(spark, snapshot.df.where(F.col("split") == split), tcfg.feed, split=split,
                                      cache_dir=cache, min_row_groups=max(2, tcfg.num_workers), **common)
                for split in SPLITS}
    return {split: make_spec(tcfg.feed, files=files[split], split=split, teacher_column=teacher_column if split == "train" else None,
                             **common) for split in SPLITS}


def _split_files(snapshot: TableSnapshot, split: str) -> tuple[str, ...]:
    files, _ = split_files(snapshot.path, snapshot.format, split, snapshot.version)
    if not files:
        raise TrainInputError(f"{snapshot.path} has no rows in split {split!r}; ingest more data or change the split fractions")
    return tuple(files)


def _input_shape(snapshot: TableSnapshot, kind: str) -> Any:
    """Image (H, W, C) or token length, read from one row of the table (every row has the same)."""
    column = "shape" if kind == "image" else "input_ids"
    row = snapshot.df.select(column).first()
    if row is None:
        raise TrainInputError(f"{snapshot.path} has no rows to train on")
    return tuple(row[column]) if kind == "image" else len(row[column])
