"""Local training end to end on tiny synthetic tables read by the real feeder (no Spark)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlspark.config import FeedConfig, TrainConfig
from dlspark.feed import make_spec
from dlspark.train import TrainJob, run_training

SIZE = 8
REPO = Path(__file__).resolve().parents[1]


def write_image_table(root: Path, rows: dict[str, int], seed: int = 0, noise: bool = False) -> Path:
    """Hive-partitioned ``split=<name>/part-0.parquet`` of 8x8x1 images: class 1 has a brighter top half,
    class 0 a brighter bottom half (separable, invariant to horizontal flips); ``noise`` makes the contrast
    faint so that accuracy stays below 1 and metrics keep moving between epochs."""
    rng = np.random.default_rng(seed)
    for split, n in rows.items():
        labels = np.arange(n) % 2
        pixels = rng.integers(0, 200 if noise else 90, size=(n, SIZE, SIZE, 1), dtype=np.uint8)
        for i, label in enumerate(labels):
            half = slice(0, SIZE // 2) if label == 1 else slice(SIZE // 2, SIZE)
            pixels[i, half] += 12 if noise else 120
        table = pa.table({
            "label": pa.array(["top" if v else "bottom" for v in labels]),
            "label_index": pa.array(labels, pa.int32()),
            "pixels": pa.array([p.tobytes() for p in pixels], pa.binary()),
            "shape": pa.array([[SIZE, SIZE, 1]] * n, pa.list_(pa.int32())),
        })
        out = root / f"split={split}"
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "part-0.parquet", row_group_size=64)
    return root


def image_job(table: Path, ckpt: Path, run_name: str = "run", noisy: bool = False, **train: object) -> TrainJob:
    """A TrainJob over ``table`` with a small CNN; ``train`` overrides TrainConfig fields."""
    feed = FeedConfig(batch_size=16, shuffle_buffer=64, prefetch_batches=2, reader_threads=1, augment=False)
    values = dict(epochs=2, lr=0.01, warmup_epochs=0.2, checkpoint_every_steps=1000, early_stopping_patience=0, feed=feed)
    cfg = TrainConfig(**{**values, **train})
    specs = {split: make_spec(cfg.feed, kind="image", files=tuple(str(p) for p in sorted((table / f"split={split}").glob("*.parquet"))),
                              split=split, seed=cfg.seed, image_shape=(SIZE, SIZE, 1),
                              normalize=((0.45,), (0.25,)) if noisy else ((0.5,), (0.25,)))
             for split in ("train", "val", "test")}
    model = {"name": "cnn", "in_channels": 1, "num_classes": 2, "widths": [8, 16], "hidden": 16, "dropout": 0.1}
    return TrainJob(config=cfg, train=specs["train"], val=specs["val"], test=specs["test"], num_classes=2,
                    labels=("bottom", "top"), checkpoint_dir=str(ckpt), run_name=run_name, model=model)


@pytest.fixture(scope="module")
def image_table(tmp_path_factory) -> Path:
    return write_image_table(tmp_path_factory.mktemp("images"), {"train": 256, "val": 64, "test": 64})


def test_local_learns_separable_images(image_table, tmp_path, caplog):
    with caplog.at_level("INFO", logger="dlspark.train.core"):
        result = run_training(image_job(image_table, tmp_path, log_every_steps=5), "local")
    steps = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert [m.split(":")[0] for m in steps] == [f"epoch {e} step {s}/16" for e in (0, 1) for s in (5, 10, 15)]
    assert all("rows/s" in m and "left in the epoch" in m for m in steps)
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert result.test_metrics["test_accuracy"] >= 0.9, result.test_metrics
    assert result.test_metrics["test_count"] == 64
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_epoch in (0, 1) and math.isclose(result.best_metric, result.history[result.best_epoch]["val_accuracy"])
    assert Path(result.model_path).is_file()
    assert result.backend == "local" and result.world_size == 1


def test_early_stopping_ends_training_and_keeps_the_best_epoch(image_table, tmp_path):
    # lr so small that nothing changes: the val metric never beats epoch 0, so patience 1 stops after epoch 1
    result = run_training(image_job(image_table, tmp_path, epochs=5, lr=1e-9, early_stopping_patience=1), "local")
    assert result.stopped_early
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert result.best_epoch == 0


def test_rerun_of_a_finished_run_trains_nothing(image_table, tmp_path):
    first = run_training(image_job(image_table, tmp_path, epochs=1), "local")
    again = run_training(image_job(image_table, tmp_path, epochs=1), "local")
    assert again.resumed_from is not None and again.timing["train_steps"] == 0
    assert again.history == first.history and again.test_metrics == first.test_metrics
    assert again.weights_digest == first.weights_digest and len(first.weights_digest) == 64
    other = run_training(image_job(image_table, tmp_path, run_name="other", epochs=1, seed=7), "local")
    assert other.weights_digest != first.weights_digest


def test_bf16_autocast_runs_on_cpu(image_table, tmp_path):
    result = run_training(image_job(image_table, tmp_path, epochs=1, precision="bf16"), "local")
    assert result.test_metrics["test_accuracy"] >= 0.8, result.test_metrics


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_and_channels_last_on_gpu(image_table, tmp_path, precision):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    result = run_training(image_job(image_table, tmp_path, epochs=2, device="cuda", precision=precision, channels_last="on"), "local")
    assert result.test_metrics["test_accuracy"] >= 0.9, result.test_metrics


class _RankOf:
    """A strategy stand-in for one rank of ``world_size``: no communication, each rank's own sums come back."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def allreduce_sum(self, tensor):
        return tensor


@pytest.mark.parametrize("world_size", [2, 3])
def test_distributed_evaluation_counts_every_row_once(tmp_path, world_size):
    """63 test rows over 2 or 3 ranks: the short ranks repeat rows to even out batch counts; those rows must not
    count, so the ranks' summed metrics equal one process's over the same split."""
    import torch

    from dlspark.models import build_model
    from dlspark.train import steps
    from dlspark.train.runtime import resolve_runtime

    job = image_job(write_image_table(tmp_path / "t", {"train": 8, "val": 8, "test": 63}, noise=True), tmp_path)
    torch.manual_seed(0)
    model = build_model(job.model_spec)
    rt = resolve_runtime(job.config, 0, image_model=True)
    local = steps.evaluate(model, job.test, _RankOf(0, 1), rt)
    ranks = [steps.evaluate(model, job.test, _RankOf(r, world_size), rt) for r in range(world_size)]
    assert local["count"] == 63 and sum(m["count"] for m in ranks) == 63
    assert sum(m["accuracy"] * m["count"] for m in ranks) / 63 == pytest.approx(local["accuracy"], abs=1e-12)
    assert sum(m["loss"] * m["count"] for m in ranks) / 63 == pytest.approx(local["loss"], rel=1e-5)
