"""The petastorm feeder: make_spark_converter on the driver, cur_shard/shard_count readers, same batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlspark.config import FeedConfig
from dlspark.feed import FeedError, FeedSpec, open_batches, petastorm_spec, split_files, torch_dataloader

pytest.importorskip("petastorm")
SHAPE = (3, 4, 1)


def write_images(root: Path, n: int) -> None:
    """``n`` train rows (label_index = row id, pixels derived from it) in one file, like the demo tables."""
    size = int(np.prod(SHAPE))
    folder = root / "split=train"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({
        "label": [f"c{i % 2}" for i in range(n)], "label_index": pa.array(range(n), pa.int32()),
        "pixels": pa.array([((np.arange(size) + 3 * i) % 256).astype(np.uint8).tobytes() for i in range(n)]),
        "shape": pa.array([list(SHAPE)] * n, pa.list_(pa.int32())),
    }), folder / "part-00000.parquet")


def rows_of(spec: FeedSpec, world_size: int) -> tuple[list[tuple[int, bytes]], list[int]]:
    """``((y, x bytes) of every row of every rank, batch count per rank)`` for epoch 0."""
    rows, counts = [], []
    for rank in range(world_size):
        with open_batches(spec, rank=rank, world_size=world_size, epoch=0) as batches:
            got = list(batches)
        counts.append(len(got))
        rows += [(int(y), x.tobytes()) for b in got for x, y in zip(b["x"], b["y"])]
    return rows, counts


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_images(root, 40)
    return root


def converted(spark, table: Path, tmp_path: Path, **kwargs) -> FeedSpec:  # noqa: ANN001
    df = spark.read.parquet(str(table)).filter("split = 'train'")
    cfg = FeedConfig(feeder="petastorm", batch_size=6, augment=False, shuffle_buffer=16)
    return petastorm_spec(spark, df, cfg, kind="image", split="train", cache_dir=str(tmp_path / "cache"),
                          image_shape=SHAPE, **kwargs)


def test_petastorm_feeder_gives_the_rows_of_the_arrow_feeder(spark, table: Path, tmp_path: Path) -> None:
    spec = converted(spark, table, tmp_path, min_row_groups=2)
    assert spec.feeder == "petastorm" and spec.petastorm_cache_dir.startswith("file://")
    assert all(str(tmp_path / "cache") in f for f in spec.files)
    files, _ = split_files(str(table), "parquet", "train")
    arrow = FeedSpec(kind="image", files=files, image_shape=SHAPE, batch_size=6, shuffle_buffer=16)
    peta_rows, peta_counts = rows_of(spec, 2)
    arrow_rows, arrow_counts = rows_of(arrow, 2)
    assert sorted(peta_rows) == sorted(arrow_rows)
    assert sorted(y for y, _ in peta_rows) == list(range(40))
    assert peta_counts == arrow_counts == [4, 4]


def test_uneven_petastorm_shards_still_yield_equal_batch_counts(spark, table: Path, tmp_path: Path) -> None:
    spec = converted(spark, table, tmp_path, min_row_groups=3)  # 3 row groups over 2 shards: 27 vs 13 rows
    rows, counts = rows_of(spec, 2)
    assert counts[0] == counts[1]
    assert {y for y, _ in rows} == set(range(40))
    with pytest.raises(FeedError, match="min_row_groups=4"):
        rows_of(spec, 4)


def test_petastorm_spec_filters_labels_outside_the_map(spark, table: Path, tmp_path: Path) -> None:
    spec = converted(spark, table, tmp_path, label_map={"c1": 1}, min_row_groups=1)
    rows, _ = rows_of(spec, 1)
    assert sorted(y for y, _ in rows) == [1] * 20


def test_petastorm_batches_through_torch_and_tf(spark, table: Path, tmp_path: Path) -> None:
    spec = converted(spark, table, tmp_path, min_row_groups=2)
    batches = list(torch_dataloader(spec, rank=1, world_size=2))
    assert [tuple(b["x"].shape) for b in batches] == [(6, 1, 3, 4)] * 3 + [(2, 1, 3, 4)]
    tf = pytest.importorskip("tensorflow")
    from dlspark.feed import tf_dataset

    xs = [(x.shape, y.dtype) for x, y, _ in tf_dataset(spec, rank=0, world_size=2)]
    assert xs[0] == ((6, 3, 4, 1), tf.int64) and len(xs) == 4



def test_a_class_sorted_split_is_materialised_with_the_classes_mixed(spark, tmp_path: Path) -> None:
    """Ingest stores a split class folder after class folder, in as many files as tasks; petastorm only shuffles a
    window of rows, so the converter's files must already mix the classes (the demo's horovod + petastorm run
    reached 0.58 validation accuracy at 0.90 training accuracy without it)."""
    from pyspark.sql import functions as F

    cls = ((F.col("id") / 100).cast("int") % 2).cast("int")   # runs of 100 rows of one class
    df = spark.range(0, 400, 1, numPartitions=2).select(     # 2 partitions, each 100 c0 then 100 c1
        F.concat(F.lit("c"), cls.cast("string")).alias("label"), cls.alias("label_index"),
        F.unhex(F.lpad(F.hex("id"), 24, "0")).alias("pixels"), F.array(*[F.lit(d) for d in SHAPE]).cast("array<int>").alias("shape"))

    def files() -> tuple[str, ...]:
        return petastorm_spec(spark, df, FeedConfig(feeder="petastorm", batch_size=8), kind="image", split="train",
                              cache_dir=str(tmp_path / "cache"), image_shape=SHAPE, min_row_groups=2, seed=7).files

    first = files()
    for file in first:
        labels = pq.read_table(file.removeprefix("file://"), columns=["label_index"]).column("label_index").to_pylist()
        assert 5 < sum(labels[:40]) < 35, f"{file}: its first 40 rows are not mixed: {labels[:40]}"
    assert files() == first  # seeded: the same split is the same cached files
