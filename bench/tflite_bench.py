"""TFLite conversions of the demo Keras model against the SavedModel they come from: size, CPU latency, throughput,
accuracy, parity.

    .venv/bin/python bench/tflite_bench.py                                # every labelled test row
    .venv/bin/python bench/tflite_bench.py --rows 1000 --latency-rows 20  # smoke

Model: ``models:/dlspark-fashion-mnist-keras@champion`` (the Keras CNN that ``jobs/train.py
--set train.framework=tensorflow`` logs as a TF SavedModel), pinned to its version. Rows: the test split of
``data/tables/images`` prepared as inference prepares them (``dlspark.export.parity.read_split`` with the model's
``extras/preprocessing.json``), laid out NHWC for Keras.

Variants, in one process: ``keras_savedmodel`` (the logged SavedModel's ``serve`` endpoint via
``tf.saved_model.load``, TF intra-op threads 2, inter-op 1); ``tflite_fp32`` and ``tflite_dynamic_int8``
(``dlspark.models.tflite.convert_saved_model`` of that SavedModel, run by ``TFLiteRunner`` with 2 threads;
dynamic-range int8 = int8 weights for tensors of >= 1024 weights, float activations).

- size: bytes of what each variant is stored as (SavedModel: its folder as an uncompressed tar; TFLite: the
  .tflite file), and the same gzip-compressed (level 6).
- latency: p50 and p95 of single-row calls (batch 1) over the first ``--latency-rows`` rows, after a warm-up call.
- throughput and accuracy: one pass over every row in batches of ``--batch-size``, after one warm-up batch.
- agreement: fraction of rows whose class equals the SavedModel's; max |logit diff| against it.
- convert_s: wall time of the conversion (SavedModel -> .tflite).

Results: ``bench/results/tflite.json``.
"""
import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
THREADS = 2
MODEL = "models:/dlspark-fashion-mnist-keras@champion"
log = logging.getLogger("tflite_bench")


def stored_sizes(path: Path, workdir: Path) -> dict[str, int]:
    """``file_sizes`` of a file, or of a folder packed as one uncompressed tar."""
    from dlspark.export.optimize import file_sizes

    if path.is_dir():
        packed = workdir / f"{path.name}.tar"
        with tarfile.open(packed, "w") as tar:
            tar.add(path, arcname=path.name)
        path = packed
    return file_sizes(path)


def latency_ms(fn: Callable, inputs: np.ndarray, rows: int) -> dict[str, float]:
    """p50 / p95 milliseconds of one call on one row, after one warm-up call."""
    singles = [np.ascontiguousarray(inputs[i:i + 1]) for i in range(min(rows, len(inputs)))]
    fn(singles[0])
    times = []
    for x in singles:
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return {"latency_p50_ms_batch1": round(statistics.median(times), 3),
            "latency_p95_ms_batch1": round(float(np.percentile(times, 95)), 3)}


def measure(name: str, fn: Callable, stored: Path, inputs: np.ndarray, labels: np.ndarray,
            reference: np.ndarray | None, args: argparse.Namespace, **facts: Any) -> tuple[dict, np.ndarray]:
    from dlspark.export.parity import accuracy, batched_logits

    fn(np.ascontiguousarray(inputs[:args.batch_size]))  # warm-up
    start = time.perf_counter()
    logits = batched_logits(fn, inputs, args.batch_size)
    seconds = time.perf_counter() - start
    ref = logits if reference is None else reference
    row = {"variant": name, **stored_sizes(stored, args.workdir), **latency_ms(fn, inputs, args.latency_rows),
           "throughput_rows_per_s": round(len(logits) / seconds, 1), "batch_size": args.batch_size,
           "accuracy": round(accuracy(logits, labels), 4),
           "agreement_with_savedmodel": round(float((logits.argmax(1) == ref.argmax(1)).mean()), 4),
           "max_abs_logit_diff": float(f"{np.abs(logits - ref).max():.3g}"), **facts}
    log.info("%s", row)
    return row, logits


def bench(args: argparse.Namespace) -> dict:
    from dlspark.config import MlflowConfig
    from dlspark.export.parity import SplitSource, read_split
    from dlspark.export.tflite import keras_saved_model_dir
    from dlspark.inference.keras_predictor import load_keras_call
    from dlspark.inference.model import load_model
    from dlspark.models.tflite import TFLiteRunner, convert_saved_model
    from dlspark.tracking import resolve_tracking

    bundle = load_model(resolve_tracking(MlflowConfig(), str(args.data_dir)), args.model)
    data = read_split(SplitSource(str(args.data_dir / "tables" / "images"), "parquet", "test"), bundle.preprocessing)
    keep = np.flatnonzero(data.labels >= 0)[: args.rows or None]
    inputs = np.ascontiguousarray(data.inputs[keep].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    labels = data.labels[keep]
    model_dir = Path(bundle.local_dir)
    saved_model = keras_saved_model_dir(model_dir, args.model)
    serve, _ = load_keras_call(model_dir)
    row, reference = measure("keras_savedmodel", lambda x: np.asarray(serve(x)), saved_model, inputs, labels, None, args)
    rows = [row]
    for quantization in ("fp32", "dynamic_int8"):
        start = time.perf_counter()
        path = convert_saved_model(saved_model, args.workdir / f"{quantization}.tflite", quantization=quantization)
        convert_s = round(time.perf_counter() - start, 2)
        runner = TFLiteRunner(path, threads=THREADS)
        rows.append(measure(f"tflite_{quantization}", runner, path, inputs, labels, reference, args,
                            convert_s=convert_s)[0])
    return {"model": bundle.ref.label, "model_uri": bundle.ref.uri, "rows": len(keep),
            "data": f"{data.description.split(' (')[0]}: {len(keep)} rows", "variants": rows}


def machine() -> dict:
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    try:
        import ai_edge_litert  # noqa: F401
        interpreter = "ai_edge_litert"
    except ImportError:
        interpreter = f"tf.lite.Interpreter (tensorflow {tf.__version__})"
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__,
            "interpreter": interpreter, "load_average_at_start": [round(v, 1) for v in os.getloadavg()]}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=0, help="first N labelled test rows only (0: all)")
    parser.add_argument("--latency-rows", type=int, default=200, help="single-row calls timed per variant")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per call for throughput and accuracy")
    parser.add_argument("--model", default=MODEL, help="a registered Keras image model (pinned when run)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="holds mlflow/ and tables/images")
    parser.add_argument("--out", type=Path, default=RESULTS / "tflite.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)  # before TF's runtime starts
    tf.config.threading.set_inter_op_parallelism_threads(1)
    info = machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlspark-tflite-bench-") as workdir:
        args.workdir = Path(workdir)
        result = bench(args)
    busy = max(info["load_average_at_start"][0], os.getloadavg()[0]) > (os.cpu_count() or 1)
    out = {"benchmark": "tflite", "result": result, "machine": info, "threads": THREADS,
           "wall_s": round(time.perf_counter() - started, 1),
           "load_average_at_end": [round(v, 1) for v in os.getloadavg()],
           "note": ("measured while other work ran (1-minute load average above the core count): timings are "
                    "noisy, sizes / accuracy / parity are not") if busy else "measured on a quiet machine",
           "command": " ".join([".venv/bin/python bench/tflite_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(result["variants"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
