"""The pyarrow feeder (dlspark.feed): sharding, order, equal batch counts, decoding, errors. No Spark."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlspark.config import FeedConfig
from dlspark.feed import FeedError, FeedSpec, image_normalization, make_spec, open_batches, plan, preprocessing_spec, split_files, to_torch
from dlspark.feed.stream import ShufflePool

SHAPE = (4, 5, 1)


def image_rows(ids: range, shape: tuple[int, int, int] = SHAPE) -> pa.Table:
    """Rows whose label_index is the row id and whose pixels are (id * 7 + position) % 256."""
    size = int(np.prod(shape))
    pixels = [((np.arange(size) + i * 7) % 256).astype(np.uint8).tobytes() for i in ids]
    return pa.table({
        "path": [f"img{i}.png" for i in ids], "label": [f"c{i % 3}" for i in ids],
        "label_index": pa.array(list(ids), pa.int32()), "pixels": pa.array(pixels, pa.binary()),
        "shape": pa.array([list(shape)] * len(ids), pa.list_(pa.int32())),
    })


def write_split(root: Path, split: str, table: pa.Table, files: int, row_group_size: int) -> None:
    folder = root / f"split={split}"
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(table), files + 1).astype(int)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(a, b - a), folder / f"part-{k:05d}.parquet", row_group_size=row_group_size)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """60 train rows in 3 files of 4 row groups each (12 row groups), 20 val rows in one file."""
    write_split(tmp_path, "train", image_rows(range(60)), files=3, row_group_size=5)
    write_split(tmp_path, "val", image_rows(range(100, 120)), files=1, row_group_size=100)
    (tmp_path / "_SUCCESS").touch()
    (tmp_path / "split=train" / ".part-00000.parquet.crc").touch()
    return tmp_path


def spec_for(root: Path, split: str = "train", **fields) -> FeedSpec:
    files, _ = split_files(str(root), "parquet", split)
    return FeedSpec(**{"kind": "image", "files": files, "image_shape": SHAPE, "batch_size": 4,
                       "shuffle_buffer": 8, **fields})


def read_epoch(spec: FeedSpec, world_size: int = 1, epoch: int = 0) -> list[list[dict]]:
    out = []
    for rank in range(world_size):
        with open_batches(spec, rank=rank, world_size=world_size, epoch=epoch) as batches:
            got = list(batches)
            assert len(got) == len(batches)
        out.append(got)
    return out


def ids(per_rank: list[list[dict]]) -> list[int]:
    return [int(v) for batches in per_rank for b in batches for v in b["y"]]


@pytest.mark.parametrize("split,world_size", [("train", 1), ("train", 2), ("train", 3), ("val", 2), ("val", 4)])
def test_every_row_once_across_ranks_with_equal_batch_counts(images: Path, split: str, world_size: int) -> None:
    per_rank = read_epoch(spec_for(images, split), world_size)
    expected = list(range(60)) if split == "train" else list(range(100, 120))
    assert sorted(ids(per_rank)) == expected
    assert len({len(batches) for batches in per_rank}) == 1
    assert len({tuple(len(b["y"]) for b in batches) for batches in per_rank}) == 1


def test_uneven_split_pads_short_ranks_by_repeating_one_row(images: Path) -> None:
    per_rank = read_epoch(spec_for(images, "val", batch_size=3), world_size=3)  # 20 rows: shares 6, 7, 7
    assert [sum(len(b["y"]) for b in batches) for batches in per_rank] == [7, 7, 7]
    assert set(ids(per_rank)) == set(range(100, 120)) and len(ids(per_rank)) == 21
    weights = [b.get("weight", np.ones(len(b["y"]), np.float32)) for batches in per_rank for b in batches]
    assert "weight" in per_rank[0][0] and "weight" not in per_rank[1][0]   # only the short rank repeats a row
    labels = [b["y"] for batches in per_rank for b in batches]
    counted = [int(v) for y, w in zip(labels, weights) for v, x in zip(y, w) if x == 1]
    assert sorted(counted) == list(range(100, 120))   # the repeated row has weight 0: each row counts once
    assert sum(float(w.sum()) for w in weights) == 20


def test_even_shares_carry_no_weight_column(images: Path) -> None:
    per_rank = read_epoch(spec_for(images, "val", batch_size=3), world_size=2)   # 20 rows: shares 10, 10
    assert all("weight" not in b for batches in per_rank for b in batches)


def test_drop_last_yields_whole_batches_of_the_smallest_share(images: Path) -> None:
    per_rank = read_epoch(spec_for(images, "val", batch_size=3, drop_last=True), world_size=3)
    assert [[len(b["y"]) for b in batches] for batches in per_rank] == [[3, 3]] * 3
    assert len(set(ids(per_rank))) == 18


def test_order_depends_only_on_seed_and_epoch(images: Path) -> None:
    spec = spec_for(images)
    first, again = ids(read_epoch(spec, 2, epoch=1)), ids(read_epoch(spec, 2, epoch=1))
    assert first == again
    assert ids(read_epoch(spec, 2, epoch=2)) != first
    assert ids(read_epoch(spec_for(images, seed=5), 2, epoch=1)) != first
    assert sorted(ids(read_epoch(spec, 2, epoch=2))) == sorted(first)


def test_without_shuffle_rows_come_in_file_order(images: Path) -> None:
    assert ids(read_epoch(spec_for(images, shuffle=False))) == list(range(60))


def test_limit_rows_keeps_the_first_rows_of_the_split(images: Path) -> None:
    per_rank = read_epoch(spec_for(images, limit_rows=7, shuffle=True), world_size=1)
    assert sorted(ids(per_rank)) == list(range(7))


def expected_x(row_id: int, mean: float, std: float) -> np.ndarray:
    size = int(np.prod(SHAPE))
    pixels = ((np.arange(size) + row_id * 7) % 256).reshape(SHAPE).astype(np.float32)
    return ((pixels / 255 - mean) / std).transpose(2, 0, 1)


def test_images_are_decoded_normalised_and_laid_out_nchw(images: Path) -> None:
    spec = spec_for(images, normalize=((0.5,), (0.25,)), shuffle=False)
    batch = read_epoch(spec)[0][0]
    assert batch["x"].dtype == np.float32 and batch["x"].shape == (4, 1, 4, 5) and batch["y"].dtype == np.int64
    for x, row_id in zip(batch["x"], batch["y"]):
        np.testing.assert_allclose(x, expected_x(int(row_id), 0.5, 0.25), rtol=1e-5, atol=1e-6)
    last = read_epoch(spec_for(images, channels_last=True, shuffle=False))[0][0]
    assert last["x"].shape == (4, 4, 5, 1)
    np.testing.assert_allclose(last["x"][0], expected_x(0, 0.0, 1.0).transpose(1, 2, 0), atol=1e-6)


def test_augmentation_changes_train_images_only_and_is_deterministic(images: Path) -> None:
    cfg = FeedConfig(augment=True, batch_size=4)
    files, _ = split_files(str(images), "parquet", "train")
    train = make_spec(cfg, kind="image", files=files, split="train", image_shape=SHAPE)
    val = make_spec(cfg, kind="image", files=files, split="val", image_shape=SHAPE)
    assert (train.augment, train.shuffle, val.augment, val.shuffle) == (True, True, False, False)
    batches = read_epoch(train)[0]
    plain = [expected_x(int(i), 0.0, 1.0) for b in batches for i in b["y"]]
    augmented = [x for b in batches for x in b["x"]]
    assert sum(not np.allclose(a, p) for a, p in zip(augmented, plain)) > len(plain) // 2
    assert all(np.allclose(x, p) for b in read_epoch(val)[0] for x, p in
               zip(b["x"], [expected_x(int(i), 0.0, 1.0) for i in b["y"]]))
    again = [x for b in read_epoch(train)[0] for x in b["x"]]
    assert all(np.array_equal(a, b) for a, b in zip(augmented, again))


def test_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    write_split(tmp_path, "train", image_rows(range(8)).drop(["pixels"]), files=1, row_group_size=8)
    with pytest.raises(FeedError, match=r"no column\(s\) \['pixels'\].*ingest_images"):
        read_epoch(spec_for(tmp_path))


def test_wrong_image_shape_is_a_clear_error(images: Path) -> None:
    with pytest.raises(FeedError, match=r"image_shape \(2, 2, 1\)"):
        read_epoch(spec_for(images, image_shape=(2, 2, 1)))
    with pytest.raises(FeedError, match=r"shape column holds \[4, 5, 1\]"):
        read_epoch(spec_for(images, image_shape=(5, 4, 1)))


@pytest.mark.parametrize("fields,message", [
    ({"image_shape": None}, "image feeds need image_shape"),
    ({"normalize": ((0.5, 0.5), (1.0, 1.0))}, "one mean and one std per channel"),
    ({"files": ()}, "files is empty"),
    ({"kind": "audio"}, "kind must be"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
])
def test_bad_specs_are_refused(images: Path, fields: dict, message: str) -> None:
    with pytest.raises(FeedError, match=message):
        spec_for(images, **fields)


def test_rank_outside_world_is_refused(images: Path) -> None:
    with pytest.raises(FeedError, match="rank must be in"):
        with open_batches(spec_for(images), rank=2, world_size=2):
            pass


def text_rows(labels: list[str], length: int = 6) -> pa.Table:
    ids = [[i] * length for i in range(len(labels))]
    return pa.table({"text": [f"t{i}" for i in range(len(labels))], "label": labels,
                     "label_index": pa.array([["negative", "neutral", "positive"].index(x) for x in labels], pa.int32()),
                     "input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "attention_mask": pa.array([[1] * length] * len(labels), pa.list_(pa.int8()))})


def test_text_label_map_skips_unmapped_labels_on_every_rank(tmp_path: Path) -> None:
    labels = ["negative", "neutral", "positive"] * 10
    write_split(tmp_path, "train", text_rows(labels), files=1, row_group_size=1000)
    files, _ = split_files(str(tmp_path), "parquet", "train")
    spec = FeedSpec(kind="text", files=files, max_length=6, batch_size=3, label_map={"negative": 0, "positive": 1})
    per_rank = read_epoch(spec, world_size=2)
    rows = [(int(b["input_ids"][k, 0]), int(b["y"][k])) for batches in per_rank for b in batches for k in range(len(b["y"]))]
    assert sorted(r for r, _ in rows) == [i for i, x in enumerate(labels) if x != "neutral"]
    assert all(y == (labels[r] == "positive") for r, y in rows)
    batch = per_rank[0][0]
    assert batch["input_ids"].dtype == np.int64 and batch["attention_mask"].shape == (3, 6)
    assert len(per_rank[0]) == len(per_rank[1])
    with pytest.raises(FeedError, match="max_length"):
        read_epoch(FeedSpec(kind="text", files=files, max_length=8))


def test_split_files_lists_data_files_and_names_missing_splits(images: Path) -> None:
    files, version = split_files(str(images), "parquet", "train")
    assert version is None and [Path(f).name for f in files] == [f"part-{k:05d}.parquet" for k in range(3)]
    with pytest.raises(FeedError, match=r"no folder split=test.*split=train"):
        split_files(str(images), "parquet", "test")
    with pytest.raises(FeedError, match="relative"):
        split_files("tables/images", "parquet", "train")


def test_split_files_of_a_delta_snapshot(tmp_path: Path) -> None:
    deltalake = pytest.importorskip("deltalake")
    table = image_rows(range(10)).append_column("split", pa.array(["train"] * 6 + ["val"] * 4))
    uri = str(tmp_path / "delta")
    deltalake.write_deltalake(uri, table, partition_by=["split"])
    deltalake.write_deltalake(uri, image_rows(range(10, 14)).append_column("split", pa.array(["train"] * 4)),
                              mode="append", partition_by=["split"])
    v0, version0 = split_files(uri, "delta", "train", version=0)
    latest, version1 = split_files(uri, "delta", "train")
    assert (version0, version1, len(v0), len(latest)) == (0, 1, 1, 2)
    assert "split=train" in v0[0] and set(v0) < set(latest)
    spec = FeedSpec(kind="image", files=latest, image_shape=SHAPE, batch_size=4)
    assert sorted(ids(read_epoch(spec))) == list(range(6)) + list(range(10, 14))


def test_to_torch_shares_memory(images: Path) -> None:
    batch = read_epoch(spec_for(images))[0][0]
    tensors = to_torch(batch)
    assert tensors["x"].data_ptr() == batch["x"].ctypes.data and tuple(tensors["x"].shape) == batch["x"].shape


def test_preprocessing_spec_is_json_and_names_the_normalisation(images: Path) -> None:
    spec = spec_for(images, normalize=((0.3,), (0.2,)), label_map={"c0": 0, "c1": 1, "c2": 2})
    data = json.loads(json.dumps(preprocessing_spec(spec)))
    assert data["image_shape"] == [4, 5, 1] and data["mean"] == [0.3] and data["std"] == [0.2]
    assert data["layout"] == "NCHW" and data["target_labels"] == {"0": ["c0"], "1": ["c1"], "2": ["c2"]}


def test_image_normalization_measures_the_sample(images: Path) -> None:
    files, _ = split_files(str(images), "parquet", "val")
    mean, std = image_normalization(files, SHAPE)
    pixels = np.stack([((np.arange(20) + i * 7) % 256) for i in range(100, 120)]) / 255
    assert mean[0] == pytest.approx(pixels.mean()) and std[0] == pytest.approx(pixels.std())


def test_leaving_early_stops_the_feeder_threads(images: Path) -> None:
    before = threading.active_count()
    with open_batches(spec_for(images, prefetch_batches=1), rank=0, world_size=1) as batches:
        next(batches)
    assert threading.active_count() <= before


def test_few_row_groups_fall_back_to_row_ranges() -> None:
    units = plan.make_units([(0, 0, 100)], world_size=2)
    assert len(units) == 16 and sum(u.stop - u.start for u in units) == 100
    assert len(plan.make_units([(f, 0, 10) for f in range(4)], world_size=2)) == 4


def test_shares_partition_the_rows_of_a_masked_split() -> None:
    masks = {(0, 0): np.arange(30) % 3 != 1}
    seen = []
    for rank in range(3):
        tasks, rows, total = plan.plan_rank([(0, 0, 30)], masks, rank=rank, world_size=3, shuffle=True, seed=1,
                                            epoch=0, limit_rows=None)
        kept = [i for t in tasks for a, b in t.ranges for i in range(a, b) if masks[(0, 0)][i]]
        assert len(kept) == rows and total == 20
        seen += kept
    assert sorted(seen) == [i for i in range(30) if i % 3 != 1]


def test_shuffle_pool_emits_a_permutation() -> None:
    pool = ShufflePool(5, np.random.default_rng(0))
    chunks = [{"y": np.arange(k, k + 4)} for k in range(0, 20, 4)]
    out = [c["y"] for chunk in chunks for c in pool.push(chunk)] + [c["y"] for c in pool.drain()]
    flat = np.concatenate(out)
    assert sorted(flat.tolist()) == list(range(20)) and flat.tolist() != list(range(20))


def test_spec_pickles_and_the_arrow_feeder_never_imports_petastorm(images: Path) -> None:
    spec = spec_for(images, label_map={"c0": 0, "c1": 1})
    assert pickle.loads(pickle.dumps(spec)) == spec
    code = ("import pickle, sys; from dlspark.feed import open_batches; spec = pickle.loads(sys.stdin.buffer.read())\n"
            "with open_batches(spec) as batches: rows = sum(len(b['y']) for b in batches)\n"
            "print(rows, 'petastorm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(spec), capture_output=True, check=True)
    assert out.stdout.decode().split() == ["40", "False"]
