"""Training-feeder throughput: arrow feeder vs petastorm feeder vs in-memory numpy batches, same data, one run.

    .venv/bin/python bench/feeder_bench.py                         # 24k 28x28x1 + 20k 64x64x3 images, text table
    .venv/bin/python bench/feeder_bench.py --rows 24000 --rows-rgb 0 --repeats 5

Data: generated image tables written with pyarrow in the ingest layout (``split=train/``, 4 files, row groups
of 4096 rows, uint8 HWC ``pixels`` + ``shape`` + ``label_index``), and the real ingested text table
(``data/tables/text``, train split) when it exists. Every feeder yields the same batches: images
``float32 [B, C, H, W]`` normalised, text ``int64 [B, L]`` ids + mask, ``int64`` targets; one rank, epoch-sized
reads, shuffling on, augmentation off (one extra arrow row with augmentation on).

- arrow: ``dlspark.feed.open_batches`` with ``feeder="arrow"`` (pyarrow row groups, reader threads).
- petastorm: the same call with the spec from ``petastorm_spec`` (``make_spark_converter`` + ``make_batch_reader``);
  the converter's materialisation is timed separately (a one-off driver step, excluded from the rate).
- numpy: the split preloaded in memory as uint8 arrays; a permutation cut into batches, the same
  normalisation; no I/O, no threads: what the decode work alone costs.

Rates are rows/s over whole epochs (open to last batch), the median of ``--repeats`` epochs after one warm-up;
the feeders take turns epoch by epoch so that load from other processes hits them alike.
Results: ``bench/results/feeder.json`` with the command and the ratios computed in this run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
log = logging.getLogger("bench")


def write_image_table(root: Path, rows: int, shape: tuple[int, int, int], files: int = 4, row_group: int = 4096) -> None:
    """``rows`` random images of ``shape`` (10 classes) as ``root/split=train/part-*.parquet``."""
    rng = np.random.default_rng(0)
    folder = root / "split=train"
    folder.mkdir(parents=True, exist_ok=True)
    size = int(np.prod(shape))
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        n = int(b - a)
        data = rng.integers(0, 256, (n, size), dtype=np.uint8)
        pixels = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(np.arange(n + 1, dtype=np.int32) * size),
                                                              pa.py_buffer(data.tobytes())])
        labels = rng.integers(0, 10, n).astype(np.int32)
        table = pa.table({"label": pa.array([f"c{v}" for v in labels]), "label_index": labels, "pixels": pixels,
                          "shape": pa.array([list(shape)] * n, pa.list_(pa.int32()))})
        pq.write_table(table, folder / f"part-{k:05d}.parquet", row_group_size=row_group)


def interleaved_rates(runs: dict, repeats: int) -> dict[str, tuple[float, list[float]]]:
    """Median rows/s of each ``run(epoch) -> rows`` over ``repeats`` epochs after one warm-up each.

    The feeders take turns epoch by epoch, so that load from other processes falls on all of them alike.
    """
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(0)
    for epoch in range(1, repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            rows = run(epoch)
            rates[name].append(rows / (time.perf_counter() - start))
    return {name: (statistics.median(r), [round(v, 1) for v in r]) for name, r in rates.items()}


def feeder_epoch(spec):  # noqa: ANN001, ANN201
    from dlspark.feed import open_batches

    def run(epoch: int) -> int:
        rows = 0
        with open_batches(spec, rank=0, world_size=1, epoch=epoch) as batches:
            for batch in batches:
                rows += len(batch["y"])
        return rows

    return run


def numpy_epoch(spec):  # noqa: ANN001, ANN201
    """Batches cut from the split preloaded in memory, with the same normalisation / int64 widening."""
    from dlspark.feed.decode import decode_table, normalize_images

    tables = [pq.read_table(f) for f in spec.files]
    chunks = [decode_table(t, spec, f) for t, f in zip(tables, spec.files)]
    data = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    mean, std = spec.mean_std

    def run(epoch: int) -> int:
        order = np.random.default_rng([spec.seed, epoch]).permutation(len(data["y"]))
        for start in range(0, len(order), spec.batch_size):
            index = order[start:start + spec.batch_size]
            if spec.kind == "image":
                normalize_images(data["pixels"][index], mean, std, False)
            else:
                data["input_ids"][index].astype(np.int64), data["attention_mask"][index].astype(np.int64)
            data["y"][index].astype(np.int64)
        return len(order)

    return run


def bench_dataset(spark, name: str, root: Path, kind: str, args: argparse.Namespace, **fields) -> dict:  # noqa: ANN001
    from dlspark.config import FeedConfig
    from dlspark.feed import make_spec, petastorm_spec, split_files

    files, _ = split_files(str(root), "parquet", "train")
    cfg = FeedConfig(batch_size=args.batch_size, augment=False, reader_threads=args.threads)
    arrow = make_spec(cfg, kind=kind, files=files, split="train", **fields)
    start = time.perf_counter()
    df = spark.read.parquet(str(root)).filter("split = 'train'")
    peta = petastorm_spec(spark, df, cfg, kind=kind, split="train", cache_dir=str(args.workdir / "petastorm"),
                          min_row_groups=4, **fields)
    convert_s = time.perf_counter() - start
    runs = {"numpy": numpy_epoch(arrow), "arrow": feeder_epoch(arrow), "petastorm": feeder_epoch(peta)}
    if kind == "image":
        aug = make_spec(FeedConfig(batch_size=args.batch_size, augment=True, reader_threads=args.threads),
                        kind=kind, files=files, split="train", **fields)
        runs["arrow_augment"] = feeder_epoch(aug)
    rates = interleaved_rates(runs, args.repeats)
    for label, (rate, _) in rates.items():
        log.info("%s %s: %.0f rows/s", name, label, rate)
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    return {
        "data": name, "kind": kind, "rows": rows, "batch_size": args.batch_size, "reader_threads": args.threads,
        "rows_per_s": {k: round(v[0], 1) for k, v in rates.items()},
        "epoch_rates": {k: v[1] for k, v in rates.items()},
        "ratios": {"arrow_over_petastorm": round(rates["arrow"][0] / rates["petastorm"][0], 2),
                   "arrow_over_numpy": round(rates["arrow"][0] / rates["numpy"][0], 2),
                   "petastorm_over_numpy": round(rates["petastorm"][0] / rates["numpy"][0], 2)},
        "petastorm_convert_s": round(convert_s, 1),
    }


def machine() -> dict:
    import petastorm
    import pyspark

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "pyarrow": pa.__version__, "petastorm": petastorm.__version__, "pyspark": pyspark.__version__,
            "load_average_at_start": [round(v, 1) for v in os.getloadavg()]}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=24000, help="28x28x1 images (0: skip)")
    parser.add_argument("--rows-rgb", type=int, default=20000, help="64x64x3 images (0: skip)")
    parser.add_argument("--text", default=str(REPO / "data" / "tables" / "text"), help="ingested text table")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    keep = args.workdir is not None
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dlspark-feeder-bench-"))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from dlspark.config import SparkConfig
    from dlspark.spark.session import build_spark_session

    info = machine()
    spark = build_spark_session(SparkConfig(master="local[2]", driver_memory="6g", ui_enabled=False))
    results = []
    for rows, shape in ((args.rows, (28, 28, 1)), (args.rows_rgb, (64, 64, 3))):
        if rows:
            root = args.workdir / f"images_{shape[0]}x{shape[1]}x{shape[2]}"
            write_image_table(root, rows, shape)
            results.append(bench_dataset(spark, f"{rows} random {shape[0]}x{shape[1]}x{shape[2]} uint8 images", root,
                                         "image", args, image_shape=shape, normalize=((0.5,) * shape[2], (0.25,) * shape[2])))
    text = Path(args.text)
    if (text / "split=train").is_dir():
        length = pq.read_table(next((text / "split=train").glob("*.parquet")), columns=["input_ids"]).column(0)[0]
        results.append(bench_dataset(spark, f"ingested text table {text.name} (train split)", text, "text", args,
                                     max_length=len(length)))
    spark.stop()
    if not keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    out = {"benchmark": "feeder", "unit": "rows/s (images/s for image tables)", "target": {"arrow_over_petastorm": 1.5},
           "results": results, "machine": info,
           "command": " ".join([".venv/bin/python bench/feeder_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feeder.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
