"""Training benchmarks on the demo Fashion-MNIST table (28x28x1, compact CNN), measured in one run.

    .venv/bin/python bench/train_bench.py feeder --steps 200           # real arrow feeder vs in-memory batches
    .venv/bin/python bench/train_bench.py backends --rows 8192 --epochs 2   # local vs horovod vs torch_distributor
    .venv/bin/python bench/train_bench.py all                          # both; writes bench/results/train.json

``feeder``: the same local training loop (``train_worker``) over the same first ``steps`` batches, once fed by
the arrow feeder and once by those batches pre-decoded in memory; the figure is the ratio of training
images/s (target >= 0.90). ``backends``: the same job (``num_workers`` 2, per-worker batch 128, LR scaled by
world size) with each backend; step time is training seconds / optimizer steps of rank 0, accuracy is the
best model's test accuracy on the full test split. Spark start-up is excluded; process launch is not.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

from dlspark.config import TrainConfig, load_config
from dlspark.feed import image_normalization, make_spec, open_batches, split_files
from dlspark.train import TrainJob, run_training, steps

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "data" / "tables" / "images"
RESULTS = REPO / "bench" / "results" / "train.json"
log = logging.getLogger("bench")


def make_job(cfg: TrainConfig, ckpt: str, run_name: str, limit_rows: int | None) -> TrainJob:
    files = {s: split_files(str(TABLE), "parquet", s)[0] for s in ("train", "val", "test")}
    norm = image_normalization(files["train"], (28, 28, 1))
    specs = {s: make_spec(cfg.feed, kind="image", files=files[s], split=s, seed=cfg.seed, image_shape=(28, 28, 1),
                          normalize=norm, limit_rows=limit_rows if s == "train" else None) for s in files}
    labels = tuple(json.loads((TABLE / "_dlspark" / "labels.json").read_text())["labels"])
    return TrainJob(config=cfg, train=specs["train"], val=specs["val"], test=specs["test"], num_classes=len(labels),
                    labels=labels, checkpoint_dir=ckpt, run_name=run_name)


@contextmanager
def in_memory_batches(spec: Any, max_steps: int) -> Iterator[None]:
    """Serve the train split's first ``max_steps`` batches (decoded once, up front) instead of the feeder."""
    with open_batches(spec, rank=0, world_size=1, epoch=0) as it:
        cached = [b for _, b in zip(range(max_steps), it)]
    real = steps.open_batches

    @contextmanager
    def fake(s: Any, **kw: Any) -> Iterator[Iterator[dict]]:
        if s is spec:
            yield iter(cached)
        else:
            with real(s, **kw) as batches:
                yield batches

    steps.open_batches = fake
    try:
        yield
    finally:
        steps.open_batches = real


def bench_feeder(base: TrainConfig, max_steps: int) -> dict[str, Any]:
    cfg = replace(base, epochs=1, max_steps_per_epoch=max_steps, backend="local", checkpoint_every_steps=10**6)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("in_memory", "arrow_feeder", "in_memory_again"):
            job = make_job(cfg, tmp, name, None)
            if name.startswith("in_memory"):
                with in_memory_batches(job.train, max_steps):
                    result = run_training(job, "local")
            else:
                result = run_training(job, "local")
            t = result.timing
            out[name] = {"images_per_s": t["train_samples"] / t["train_seconds"], "steps": t["train_steps"],
                         "step_ms": 1000 * t["train_seconds"] / t["train_steps"]}
            log.info("%s: %.0f images/s", name, out[name]["images_per_s"])
    memory = max(out["in_memory"]["images_per_s"], out["in_memory_again"]["images_per_s"])
    return {"steps": max_steps, "batch_size": cfg.feed.batch_size, "runs": out,
            "ratio_feeder_vs_memory": out["arrow_feeder"]["images_per_s"] / memory}


def bench_backends(base: TrainConfig, rows: int, epochs: int) -> dict[str, Any]:
    from dlspark.config import SparkConfig
    from dlspark.spark.session import build_spark_session

    spark = build_spark_session(SparkConfig(master="local[2]", driver_memory="2g", shuffle_partitions=2, ui_enabled=False))
    cfg = replace(base, epochs=epochs, num_workers=2, checkpoint_every_steps=10**6, early_stopping_patience=0)
    out = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for backend in ("local", "horovod", "torch_distributor"):
                t0 = time.perf_counter()
                result = run_training(make_job(cfg, tmp, backend, rows), backend, spark=spark)
                t = result.timing
                out[backend] = {"world_size": result.world_size, "wall_s": time.perf_counter() - t0,
                                "step_ms": 1000 * t["train_seconds"] / t["train_steps"], "steps": t["train_steps"],
                                "images_per_s": t["train_samples"] / t["train_seconds"],
                                "test_accuracy": result.test_metrics["test_accuracy"],
                                "val_accuracy": [h["val_accuracy"] for h in result.history]}
                log.info("%s: %s", backend, out[backend])
    finally:
        spark.stop()
    return {"train_rows": rows, "epochs": epochs, "per_worker_batch": cfg.feed.batch_size, "results": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["feeder", "backends", "all"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base = load_config(pipeline=["ingest_images", "image_classification"]).train
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["system"] = {"cpu_count": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
                         "device": "cpu", "measured_at": datetime.now(timezone.utc).isoformat()}
    if args.what in ("feeder", "all"):
        results["feeder_vs_memory"] = bench_feeder(base, args.steps)
    if args.what in ("backends", "all"):
        results["backends"] = bench_backends(base, args.rows, args.epochs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
