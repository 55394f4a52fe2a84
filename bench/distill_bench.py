"""Distillation table: teacher, student trained without it, distilled student, int8 distilled student, per task.

    .venv/bin/python bench/distill_bench.py                    # both tasks, every labelled test row
    .venv/bin/python bench/distill_bench.py --tasks text --text-rows 300 --latency-rows 20   # smoke

Models (registered; trained by ``jobs/train.py``, see BENCHMARKS.md for the commands):

- text: teacher ``dlspark-sentiment@champion`` (MiniLM), students ``dlspark-sentiment-student-plain@champion``
  (textcnn, labels only) and ``dlspark-sentiment-student@champion`` (textcnn distilled from the teacher);
- image: teacher ``dlspark-fashion-mnist@champion`` (CNN 32-64-128), students ``dlspark-fashion-mnist-student-plain``
  and ``dlspark-fashion-mnist-student`` (CNN 8-16-32).

Every model runs as ONNX on onnxruntime (2 intra-op threads, one process), exported here from its registered
eager module; the int8 student is the distilled one quantized as ``jobs/models.py export-onnx --int8`` does (images:
static QDQ calibrated on 512 train rows; text: dynamic). Rows, batches, latency and sizes as in
``bench/optimize_bench.py`` (the same helpers): accuracy over every labelled test row, MB of the .onnx file, p50 ms of
single-row calls, rows/s in batches of 256 (texts sorted by length, each batch cut to its longest row).
Results: ``bench/results/distill.json``, rendered into BENCHMARKS.md by ``bench/report.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BATCH = 256
TASKS = {
    "text": ("tables/text", "models:/dlspark-sentiment@champion", "models:/dlspark-sentiment-student-plain@champion",
             "models:/dlspark-sentiment-student@champion"),
    "image": ("tables/images", "models:/dlspark-fashion-mnist@champion", "models:/dlspark-fashion-mnist-student-plain@champion",
              "models:/dlspark-fashion-mnist-student@champion"),
}
TARGETS = {"text": {"max_points_below_teacher": 2.0, "min_speedup_over_teacher": 5.0}}
log = logging.getLogger("distill_bench")


def bench_task(task: str, args: argparse.Namespace, target, workdir: Path) -> dict:  # noqa: ANN001
    from bench.optimize_bench import THREADS, measure
    from dlspark.export.onnx import export_onnx, export_onnx_int8, onnx_runner
    from dlspark.export.parity import SplitData, SplitSource, read_split
    from dlspark.export.registered import trace_example
    from dlspark.inference.model import ModelResolutionError, load_model
    from dlspark.inference.predictors import load_torch_module

    table, *uris = TASKS[task]
    source = str(REPO / "data" / table)
    rows, teacher_rate, keep = [], None, np.zeros(0)
    for role, uri in zip(("teacher", "student without teacher", "distilled student"), uris):
        try:
            bundle = load_model(target, uri)
        except ModelResolutionError as exc:
            if role == "teacher":
                raise
            log.warning("%s %s is not registered (%s): its row is left out", role, uri, exc)
            rows.append({"variant": role, "missing": uri})
            continue
        data = read_split(SplitSource(source, "parquet", "test"), bundle.preprocessing)
        keep = np.flatnonzero(data.labels >= 0)[: args.text_rows if task == "text" and args.text_rows else None]
        data = SplitData(data.inputs[keep], data.labels[keep], data.description)
        module = load_torch_module(bundle.local_dir)
        folder = workdir / f"{task}-{len(rows)}"
        path = export_onnx(module, trace_example(data.inputs), folder / "model.onnx")
        variants = [(role, path)]
        if role == "distilled student":
            train = read_split(SplitSource(source, "parquet", "train", limit=512), bundle.preprocessing).inputs
            variants.append(("int8 distilled student", export_onnx_int8(module, trace_example(data.inputs),
                                                                         folder / "int8.onnx", calibration=train)))
        for name, file in variants:
            row, _ = measure(name, onnx_runner(file, THREADS), file, {}, data, None, BATCH, args)
            row.update(model=bundle.ref.label, spec=bundle.train_config.get("model"), mb=round(row["bytes"] / 2**20, 1))
            teacher_rate = teacher_rate or row["throughput_rows_per_s"]
            row["speedup_over_teacher"] = round(row["throughput_rows_per_s"] / teacher_rate, 2)
            rows.append(row)
    return {"task": task, "rows": rows, "test_rows": len(keep), "data": data.description, "verdict": verdict(task, rows)}


def table_line(row: dict) -> str:
    if "missing" in row:
        return f"{row['variant']:<24} not registered ({row['missing']})"
    return (f"{row['variant']:<24} {row['model']:<34} accuracy {row['accuracy']:.4f}  {row['mb']:>6} MB  "
            f"p50 {row['latency_p50_ms_batch1']:>6} ms  {row['throughput_rows_per_s']:>9,.1f} rows/s  "
            f"x{row['speedup_over_teacher']} teacher")


def verdict(task: str, rows: list[dict]) -> dict:
    """The issue's targets for the text student, computed from the rows (absent for images)."""
    if task not in TARGETS or any("missing" in r for r in rows):
        return {}
    teacher, plain, distilled = rows[0], rows[1], rows[2]
    points_below = round((teacher["accuracy"] - distilled["accuracy"]) * 100, 2)
    t = TARGETS[task]
    return {"points_below_teacher": points_below, "speedup_over_teacher": distilled["speedup_over_teacher"],
            "beats_student_without_teacher": distilled["accuracy"] > plain["accuracy"],
            "meets": points_below <= t["max_points_below_teacher"] and distilled["speedup_over_teacher"] >= t["min_speedup_over_teacher"]
            and distilled["accuracy"] > plain["accuracy"], "targets": t}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="text,image", help="which of text,image")
    parser.add_argument("--text-rows", type=int, default=0, help="first N labelled text rows only (0: all)")
    parser.add_argument("--latency-rows", type=int, default=100, help="single-row calls timed per model")
    parser.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    from bench.optimize_bench import THREADS, machine
    from dlspark.config import MlflowConfig
    from dlspark.tracking import resolve_tracking

    torch.set_num_threads(THREADS)
    info = machine()
    target = resolve_tracking(MlflowConfig(), str(REPO / "data"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlspark-distill-bench-") as workdir:
        results = [bench_task(task, args, target, Path(workdir)) for task in args.tasks.split(",")]
    info["load_average_at_end"] = [round(v, 1) for v in os.getloadavg()]
    out = {"benchmark": "distill", "results": results, "machine": info, "threads": THREADS, "batch_size": BATCH,
           "wall_s": round(time.perf_counter() - started, 1),
           "command": " ".join([".venv/bin/python bench/distill_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for r in results:
        print(f"distill {r['task']} ({r['test_rows']} labelled test rows):")
        for row in r["rows"]:
            print("  " + table_line(row))
        if r["verdict"]:
            print(f"  verdict: {r['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
