"""Explanation throughput: rows/s that ``jobs/explain.py`` explains on local[2], against a bare loop.

    .venv/bin/python bench/explain_bench.py                          # images 1000 rows, text 64 rows, 32 IG steps
    .venv/bin/python bench/explain_bench.py --image-rows 50 --text-rows 16 --steps 8   # smoke

Ours: ``pipelines.explain.explain`` on the demo's champions (``dlspark-fashion-mnist``, ``dlspark-sentiment``) over
a seeded sample of their test splits, timed from the start of the explaining job to the written table (model
shipping, Arrow in and out, the Parquet write included). Bare: the same attribution function
(``dlspark.explain.attributions``) in this one process with 2 torch threads, on the same number of test rows
already decoded in memory: the most a 2-core machine does without Spark. Results:
``bench/results/explain.json``, rendered into BENCHMARKS.md by ``bench/report.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CORES = 2


def bare_rate(kind: str, model_dir: str, pre: dict, table: Path, rows: int, steps: int, batch: int) -> float:
    """Rows/s of the attribution function alone, one process, ``CORES`` threads, inputs in memory."""
    import pyarrow.dataset as ds
    import torch

    from dlspark.explain.attributions import explain_images, explain_tokens
    from dlspark.feed.decode import normalize_images
    from dlspark.inference.predictors import eager_module
    from dlspark.inference.scoring import attended_width

    torch.set_num_threads(CORES)
    model = eager_module(model_dir, model_dir)
    data = ds.dataset(str(table / "split=test"), format="parquet").head(rows)
    start = time.perf_counter()
    for i in range(0, rows, batch):
        part = data.slice(i, batch)
        if kind == "image":
            shape = pre["image_shape"]
            pixels = np.stack([np.frombuffer(p, np.uint8).reshape(shape) for p in part.column("pixels").to_pylist()])
            x = normalize_images(pixels, pre["mean"], pre["std"], channels_last=False)
            explain_images(model, x, pre["mean"], pre["std"], steps=steps)
        else:
            ids = np.array(part.column("input_ids").to_pylist(), np.int64)
            mask = np.array(part.column("attention_mask").to_pylist(), np.int64)
            width = attended_width(mask)
            explain_tokens(model, ids[:, :width], mask[:, :width], steps=steps)
    return rows / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-rows", type=int, default=1000)
    parser.add_argument("--text-rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "lib"), os.environ.get("PYTHONPATH")]))
    sys.path[:0] = [str(REPO), str(REPO / "lib")]
    import torch

    from dlspark.config import load_config
    from dlspark.inference.model import load_model
    from dlspark.spark.session import build_spark_session
    from dlspark.tracking import resolve_tracking
    from pipelines.explain import explain

    results = []
    spark = None
    for pipeline, rows, table in (("image_classification", args.image_rows, "tables/images"),
                                  ("sentiment", args.text_rows, "tables/text")):
        if not rows:
            continue
        cfg = load_config(pipeline=pipeline, overrides=[
            f"paths.data_dir={args.data_dir}", f"explain.rows={rows}", f"explain.steps={args.steps}",
            f"explain.batch_size={args.batch_size}", f"spark.master=local[{CORES}]", "spark.ui_enabled=false"])
        spark = spark or build_spark_session(cfg.spark)
        report = explain(spark, cfg, f"bench-{pipeline}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
        bundle = load_model(resolve_tracking(cfg.mlflow, str(args.data_dir)), cfg.model_uri(None, "champion"), runtime="source")
        bare = bare_rate(bundle.kind, bundle.local_dir, dict(bundle.preprocessing), args.data_dir / table, rows, args.steps,
                         args.batch_size)
        results.append({"kind": bundle.kind, "model": report.model, "rows": report.rows, "explained": report.explained,
                        "steps": args.steps, "batch_size": args.batch_size, "seconds": round(report.seconds, 1),
                        "rows_per_s": round(report.rows_per_s, 2), "bare_rows_per_s": round(bare, 2),
                        "ours_over_bare": round(report.rows_per_s / bare, 2), "report": report.report})
        print(json.dumps(results[-1]))
    if spark is not None:
        spark.stop()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    out = {"benchmark": "explain", "results": results,
           "machine": {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                       "load_average_at_start": [round(v, 1) for v in os.getloadavg()]},
           "command": " ".join([".venv/bin/python bench/explain_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "explain.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
