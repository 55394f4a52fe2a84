"""Batch-inference throughput: dlspark scoring vs predict_batch_udf vs mlflow spark_udf vs a bare loop, one run.

    .venv/bin/python bench/inference_bench.py                           # 6917 images, 3563 texts, 3 timed rounds
    .venv/bin/python bench/inference_bench.py --images 512 --texts 256 --repeat 1   # smoke

Models: the registered champions ``models:/dlspark-fashion-mnist@champion`` (CNN, 28x28x1) and
``models:/dlspark-sentiment@champion`` (MiniLM, 64 tokens), pinned to their versions. Data: the test split of
the ingested tables (``data/tables/images``, ``data/tables/text``), tiled to the requested row count, with a
``row_id`` column, written once to 4 Parquet files that every contender reads.

- bare: one process, ``torch.set_num_threads(cores)``, the rows preloaded as numpy; the eager module of the
  model (``load_torch_module``), uint8 -> float normalisation as ours, ``inference_mode``, softmax. Text rows go
  in windows of the Arrow batch size, sorted by length, sub-batches of at most ``inference.max_batch_tokens`` padded
  tokens, each cut to its longest row: ours' work.
- ours: ``score_dataframe`` (mapInArrow) on ``spark.read.parquet``, all prediction columns.
- predict_batch_udf: ``make_predict_fn`` loads the same eager module once per worker (pyspark's model cache).
  Images: ``pixels`` (binary) becomes a normalised ``array<float>`` in the timed query through a pandas UDF,
  as a user must (predict_batch_udf takes no binary column). Text: ``input_ids`` + ``attention_mask`` as they
  are; each batch cut to its longest row (no sort: the UDF sees one batch at a time).
- mlflow_spark_udf: ``mlflow.pyfunc.spark_udf`` on the same pinned URI, ``env_manager="local"``,
  ``result_type="array<float>"``; inputs as the signature says (the same normalised pixel arrays; ids and mask
  concatenated into ``array<bigint>`` of 128 with a Spark expression). It runs the logged torch.export program,
  which has a fixed length of 64, and in local mode it loads the model in every task (measured: load_s).

Every Spark query writes to the ``noop`` sink on local[cores] (one thread per task: Spark sets OMP_NUM_THREADS
to spark.task.cpus in Python workers). One untimed warm-up query per contender first (models loaded, workers
started), then a check that every contender predicts the same classes as the bare loop on the first rows,
then ``--repeat`` timed rounds taking turns; the median rate counts. Results: ``bench/results/inference.json``.
"""
import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CORES = 2
TARGETS = {"ours_over_bare": 0.90, "ours_over_predict_batch_udf": 1.1, "ours_over_mlflow_spark_udf": 1.5,
           "ours_over_ours_source": 1.8, "ours_over_ray_data": 1.2}
RAY_PYTHON = REPO / ".venv-ray" / "bin" / "python"
MODELS = {"image": ("models:/dlspark-fashion-mnist@champion", "images", ["pixels", "shape"]),
          "text": ("models:/dlspark-sentiment@champion", "text", ["input_ids", "attention_mask"])}
DESIGN = {
    "bare": "one process, torch threads = Spark cores, rows preloaded as numpy; the model's eager module, uint8 -> "
            "float normalisation, inference_mode, softmax; text in windows of the Arrow batch size sorted by length, "
            "forward passes of at most 2048 padded tokens (inference.max_batch_tokens), each cut to its longest row "
            "(the work ours does)",
    "ours": "score_dataframe (mapInArrow) on spark.read.parquet of the table, every prediction column "
            "(class, index, probability, probabilities, top-3, error), on the runtime inference.runtime=auto picks "
            "(the fastest parity-checked export of the champion, measured at export)",
    "ours_source": "the same score_dataframe on the champion version itself (eager torch): today's default before "
                   "the runtime choice",
    "ray_data": "Ray Data 2.58 in its own venv (pyarrow >= 17): read_parquet of the same files -> map_batches with an "
                "actor pool of 2 actors x 1 CPU, each one onnxruntime session (1 thread) of the same ONNX export ours "
                "runs; class, index, probability and probabilities out, consumed by iter_batches; each round builds "
                "the dataset anew (actors start inside it, as a Ray Data job does); its rounds run after the Spark ones",
    "predict_batch_udf": "make_predict_fn loads the same eager module once per worker; images: pixels (binary) "
                         "turned into a normalised array<float> inside the timed query by a pandas UDF (predict_batch_udf "
                         "takes no binary column); text: input_ids + attention_mask, each batch cut to its longest row "
                         "(not sorted: the UDF sees one batch at a time)",
    "mlflow_spark_udf": "mlflow.pyfunc.spark_udf on the same pinned URI, env_manager=local, result_type array<float>; "
                        "images: the same pandas-UDF pixel arrays; text: ids and mask concatenated to array<bigint> "
                        "by a Spark expression; runs the logged torch.export program (fixed length 64: no cut) and, "
                        "in local mode, loads the model in every task",
}
MAX_TOKENS = 2048   # inference.max_batch_tokens' default: text forward passes of rows of similar length
log = logging.getLogger("bench")


class DisagreementError(AssertionError):
    """A contender predicted other classes than the bare loop: the benchmark would compare different work."""


def write_bench_table(source: Path, dst: Path, columns: list[str], rows: int, files: int = 4) -> Path:
    """The test split of ``source`` tiled to ``rows`` rows plus ``row_id``, as ``files`` Parquet files."""
    table = pq.read_table(source / "split=test", columns=columns)
    reps = -(-rows // table.num_rows)
    table = pa.concat_tables([table] * reps).slice(0, rows).combine_chunks().replace_schema_metadata(None)
    table = table.append_column("row_id", pa.array(np.arange(rows, dtype=np.int64)))
    dst.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(a, b - a), dst / f"part-{k:05d}.parquet", row_group_size=1024)
    return dst


# ---- bare loop -------------------------------------------------------------------------------------------

def load_arrays(path: Path, kind: str, shape: list[int]) -> dict[str, np.ndarray]:
    """The bench table in memory: uint8 pixels ``[n, H, W, C]`` or int ids/mask ``[n, L]``."""
    table = pq.read_table(path)
    if kind == "image":
        flat = np.frombuffer(b"".join(table.column("pixels").to_pylist()), np.uint8)
        return {"pixels": flat.reshape(table.num_rows, *shape).copy()}
    return {name: np.stack(table.column(name).to_numpy(zero_copy_only=False)) for name in ("input_ids", "attention_mask")}


def bare_predict(module: Any, data: dict[str, np.ndarray], pre: dict, batch: int, window: int,
                 max_tokens: int | None = None) -> np.ndarray:
    """Probabilities for every row, computed as ours computes them (same normalisation, same length cut and token
    budget per forward pass)."""
    import torch

    from dlspark.inference.scoring import length_chunks

    with torch.inference_mode():
        if "pixels" in data:
            pixels = data["pixels"]
            scale = 1.0 / (255.0 * np.asarray(pre["std"], np.float32))
            bias = -np.asarray(pre["mean"], np.float32) / np.asarray(pre["std"], np.float32)
            parts = []
            for i in range(0, len(pixels), batch):
                x = torch.from_numpy(pixels[i:i + batch]).permute(0, 3, 1, 2).float()
                x = x * torch.from_numpy(scale).view(1, -1, 1, 1) + torch.from_numpy(bias).view(1, -1, 1, 1)
                parts.append(torch.softmax(module(x), dim=1).numpy())
            return np.concatenate(parts)
        ids, mask = data["input_ids"], data["attention_mask"]
        out = np.empty((len(ids), 0), np.float32)
        lengths = mask.shape[1] - np.argmax((mask != 0)[:, ::-1], axis=1)
        for start in range(0, len(ids), window):
            order = start + np.argsort(lengths[start:start + window], kind="stable")
            for a, b in length_chunks(lengths[order], batch, max_tokens):
                rows = order[a:b]
                width = max(1, int(lengths[rows[-1]]))
                x = torch.from_numpy(np.stack([ids[rows, :width], mask[rows, :width]], axis=1).astype(np.int64))
                probs = torch.softmax(module(x), dim=1).numpy()
                if out.shape[1] == 0:
                    out = np.empty((len(ids), probs.shape[1]), np.float32)
                out[rows] = probs
        return out


# ---- Spark contenders: each returns a DataFrame with row_id and a probability (or logit) array --------------

def pixels_to_floats(pre: dict) -> Callable:
    """pandas UDF: uint8 ``pixels`` binary -> normalised ``array<float>`` (what the baselines need as input).

    (This module has no ``from __future__ import annotations``: pyspark reads the pandas type hints at runtime.)
    """
    import pandas as pd
    from pyspark.sql import functions as F

    scale = float(1.0 / (255.0 * pre["std"][0]))
    bias = float(-pre["mean"][0] / pre["std"][0])

    @F.pandas_udf("array<float>")
    def to_floats(pixels: pd.Series) -> pd.Series:
        raw = np.frombuffer(b"".join(pixels), np.uint8).reshape(len(pixels), -1)
        return pd.Series(list(raw.astype(np.float32) * np.float32(scale) + np.float32(bias)))

    return to_floats


def make_predict_fn(model_dir: str, kind: str) -> Callable:
    """predict_batch_udf's ``make_predict_fn``: load the eager module once, return batch -> probabilities."""
    def make() -> Callable:
        import torch

        from dlspark.inference.predictors import load_torch_module

        module = load_torch_module(model_dir)

        def predict_images(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()

        def predict_tokens(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            width = int((mask.shape[1] - np.argmax((mask != 0)[:, ::-1], axis=1)).max())
            x = torch.from_numpy(np.stack([ids[:, :width], mask[:, :width]], axis=1).astype(np.int64))
            with torch.inference_mode():
                return torch.softmax(module(x), dim=1).numpy()

        return predict_images if kind == "image" else predict_tokens
    return make


def contenders(spark, bundle, batch: int, fast: Any) -> dict[str, Callable[[Any], Any]]:  # noqa: ANN001
    """Name -> input DataFrame -> the contender's scored DataFrame (built lazily: one failing setup is recorded).
    ``fast``: the bundle on the runtime ``auto`` picks (ours); ``bundle``: the champion itself (everyone else)."""
    import mlflow
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    from dlspark.inference.spark_scoring import score_dataframe, scoring_spec

    kind, pre = bundle.kind, dict(bundle.preprocessing)
    shape = [int(s) for s in pre["image_shape"]] if kind == "image" else None
    made: dict[str, Any] = {}

    def ours(df: Any) -> Any:
        spec = scoring_spec(fast, passthrough=("row_id",), batch_size=batch, device="cpu", max_batch_tokens=MAX_TOKENS)
        return score_dataframe(df, spec).withColumnRenamed("probabilities", "probs")

    def ours_source(df: Any) -> Any:
        spec = scoring_spec(bundle, passthrough=("row_id",), batch_size=batch, device="cpu", max_batch_tokens=MAX_TOKENS)
        return score_dataframe(df, spec).withColumnRenamed("probabilities", "probs")

    def pbu(df: Any) -> Any:
        if "pbu" not in made:   # one UDF object = one model-cache key: the warm-up's model is reused
            made["pbu"] = predict_batch_udf(make_predict_fn(bundle.local_dir, kind), return_type=ArrayType(FloatType()),
                                            batch_size=batch, input_tensor_shapes=[[shape[2], shape[0], shape[1]]] if kind == "image"
                                            else [[pre["max_length"]], [pre["max_length"]]])
        cols = [pixels_to_floats(pre)("pixels")] if kind == "image" else [F.col("input_ids"), F.col("attention_mask")]
        return df.select("row_id", made["pbu"](*cols).alias("probs"))

    def mlflow_udf(df: Any) -> Any:
        if "mlflow" not in made:
            made["mlflow"] = mlflow.pyfunc.spark_udf(spark, bundle.ref.uri, result_type="array<float>", env_manager="local")
        col = (pixels_to_floats(pre)("pixels") if kind == "image" else
               F.concat(F.col("input_ids").cast("array<bigint>"), F.col("attention_mask").cast("array<bigint>")))
        return df.select("row_id", made["mlflow"](col).alias("probs"))

    return {"ours": ours, "ours_source": ours_source, "predict_batch_udf": pbu, "mlflow_spark_udf": mlflow_udf}


def run_noop(df: Any) -> None:
    df.write.format("noop").mode("overwrite").save()


def check_agreement(name: str, df: Any, bare: np.ndarray, rows: int) -> dict:
    """Same class as the bare loop on the scored rows ``df`` (ties within 1e-3 of the top-2 margin excused)."""
    got = df.select("row_id", "probs").toPandas().sort_values("row_id")
    probs = np.stack(got["probs"].to_numpy()).astype(np.float32)
    if name == "mlflow_spark_udf":   # the logged program returns logits
        probs = np.exp(probs - probs.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
    ref = bare[got["row_id"].to_numpy()]
    same = probs.argmax(1) == ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    real = ~same & (top2[:, 1] - top2[:, 0] > 1e-3)
    result = {"rows": int(len(got)), "same_class": float(same.mean()), "max_abs_prob_diff": float(np.abs(probs - ref).max())}
    if len(got) != rows or real.any():
        raise DisagreementError(f"{name} disagrees with the bare loop: {result}, {int(real.sum())} clear mismatches")
    return result


def bench_model(spark, kind: str, rows: int, args: argparse.Namespace) -> dict:  # noqa: ANN001
    import mlflow
    import torch

    from dlspark.config import MlflowConfig
    from dlspark.inference.model import load_model
    from dlspark.inference.predictors import load_torch_module
    from dlspark.tracking import resolve_tracking

    uri, table, columns = MODELS[kind]
    target = resolve_tracking(MlflowConfig(), str(REPO / "data"))
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.registry_uri or target.tracking_uri)
    bundle = load_model(target, uri)
    fast = load_model(target, uri, runtime="auto")
    pre = dict(bundle.preprocessing)
    path = write_bench_table(REPO / "data" / "tables" / table, args.workdir / table, columns, rows)
    shape = [int(s) for s in pre["image_shape"]] if kind == "image" else []
    data = load_arrays(path, kind, shape)
    torch.set_num_threads(CORES)
    module = load_torch_module(bundle.local_dir)
    window = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))
    start = time.perf_counter()
    mlflow.pyfunc.load_model(bundle.local_dir)
    mlflow_load_s = time.perf_counter() - start

    bare_out: dict[str, np.ndarray] = {}

    def bare() -> None:
        bare_out["probs"] = bare_predict(module, data, pre, args.batch_size, window, MAX_TOKENS)

    bare()   # warm-up, and the reference predictions
    runs: dict[str, Callable[[], None]] = {"bare": bare}
    errors: dict[str, str] = {}
    agreement: dict[str, dict] = {}
    frame = spark.read.parquet(str(path))
    checked = frame.where(f"row_id < {min(args.check_rows, rows)}")   # filtered before scoring, for every contender
    for name, build in contenders(spark, bundle, args.batch_size, fast).items():
        try:
            run_noop(build(frame))   # warm-up
            agreement[name] = check_agreement(name, build(checked), bare_out["probs"], min(args.check_rows, rows))
            runs[name] = lambda build=build: run_noop(build(frame))
        except DisagreementError:
            raise
        except Exception as exc:  # a baseline that cannot run is recorded, not fatal
            log.error("%s on %s failed: %s", name, kind, exc)
            errors[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]
    rates = timed_rounds(runs, rows, args.repeat)
    ray = ray_contender(kind, path, fast, args, bare_out["probs"])
    if "rates" in ray:
        rates["ray_data"] = ray.pop("rates")
        agreement["ray_data"] = ray.pop("agreement")
    elif "error" in ray:
        errors["ray_data"] = ray["error"]
    median = {name: round(statistics.median(r), 1) for name, r in rates.items()}
    for name, rate in median.items():
        log.info("%s %s: %.1f rows/s", kind, name, rate)
    ratios = {f"ours_over_{name}": round(median["ours"] / rate, 2) for name, rate in median.items()
              if name != "ours" and "ours" in median}
    return {
        "kind": kind, "model": bundle.ref.label, "model_uri": bundle.ref.uri, "rows": rows,
        "runtime": fast.runtime_label, "runtime_reason": fast.runtime_reason, "ray": ray,
        "data": f"{table} test split tiled to {rows} rows, {len(list(path.glob('*.parquet')))} Parquet files",
        "partitions": frame.rdd.getNumPartitions(), "batch_size": args.batch_size,
        "arrow_batch": window, "rows_per_s": median, "run_rates": {k: [round(v, 1) for v in r] for k, r in rates.items()},
        "ratios": ratios, "agreement": agreement, "errors": errors, "mlflow_load_s": round(mlflow_load_s, 2),
    }


def ray_contender(kind: str, path: Path, fast: Any, args: argparse.Namespace, bare: np.ndarray) -> dict:
    """Rates of ``bench/ray_inference.py`` under .venv-ray on the same files and ONNX model, and its class agreement
    with the bare loop on the first rows; ``{"skipped": why}`` or ``{"error": ...}`` when it cannot run."""
    import subprocess

    if fast.flavor != "onnx":
        return {"skipped": f"ours runs {fast.runtime_label}: the Ray contender runs the same ONNX export only"}
    if not RAY_PYTHON.exists():
        return {"skipped": "no .venv-ray (bench/setup_ray_venv.sh)"}
    cmd = [str(RAY_PYTHON), str(REPO / "bench" / "ray_inference.py"), kind, str(path), fast.local_dir,
           "--cores", str(CORES), "--batch-size", str(args.batch_size), "--repeat", str(args.repeat),
           "--check-rows", str(args.check_rows)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    check = np.asarray(out.pop("check"))
    ref = bare[:len(check)]
    same = check == ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    real = ~same & (top2[:, 1] - top2[:, 0] > 1e-3)
    if real.any() or out["rows"] != len(bare):
        raise DisagreementError(f"ray_data disagrees with the bare loop: {int(real.sum())} clear mismatches, "
                                f"{out['rows']} rows of {len(bare)}")
    return {**out, "agreement": {"rows": int(len(check)), "same_class": float(same.mean())}}


def timed_rounds(runs: dict[str, Callable[[], None]], rows: int, repeat: int) -> dict[str, list[float]]:
    """rows/s of every run in each of ``repeat`` rounds; the contenders take turns, so load falls on all alike."""
    import torch

    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            torch.set_num_threads(CORES)   # the bare loop's threads (nothing else in the driver changes them)
            start = time.perf_counter()
            run()
            rates[name].append(rows / (time.perf_counter() - start))
    return rates


def worker_threads(spark) -> list:  # noqa: ANN001
    """(OMP_NUM_THREADS, torch threads) as Spark's Python workers see them."""
    def probe(_: Any) -> Any:
        import torch

        return [(os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())]

    return sorted(set(spark.sparkContext.parallelize(range(CORES), CORES).mapPartitions(probe).collect()))


def machine() -> dict:
    import mlflow
    import pyspark
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "pyspark": pyspark.__version__, "mlflow": mlflow.__version__, "pyarrow": pa.__version__,
            "load_average_at_start": [round(v, 1) for v in os.getloadavg()]}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6917, help="image rows (test split tiled); 0 skips")
    parser.add_argument("--texts", type=int, default=3563, help="text rows (test split tiled); 0 skips")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per contender (median counts)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per forward pass, for every contender")
    parser.add_argument("--arrow-batch", type=int, default=512, help="spark.sql.execution.arrow.maxRecordsPerBatch")
    parser.add_argument("--check-rows", type=int, default=1024, help="rows whose classes must agree")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.json",
                        help="results file; BENCHMARKS.md is regenerated only for the default one")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    from dlspark.config import SparkConfig
    from dlspark.spark.session import build_spark_session, spark_conf_pairs

    info = machine()
    cfg = SparkConfig(master=f"local[{CORES}]", driver_memory="6g", ui_enabled=False,
                      arrow_max_records_per_batch=args.arrow_batch)
    spark = build_spark_session(cfg)
    threads = worker_threads(spark)
    results = []
    with tempfile.TemporaryDirectory(prefix="dlspark-inference-bench-") as workdir:
        args.workdir = Path(workdir)
        for kind, rows in (("image", args.images), ("text", args.texts)):
            if rows:
                results.append(bench_model(spark, kind, rows, args))
    spark.stop()
    conf = spark_conf_pairs(cfg)
    out = {"benchmark": "inference", "unit": "rows/s", "targets": TARGETS, "results": results, "machine": info,
           "design": DESIGN, "spark_conf": {k: conf[k] for k in ("spark.master", "spark.sql.execution.arrow.maxRecordsPerBatch")},
           "worker_threads": [{"OMP_NUM_THREADS": o, "torch_threads": t} for o, t in threads],
           "bare_threads": CORES, "timing": "model loading excluded by one warm-up query per contender, except "
           "mlflow_spark_udf, which loads the model in every task in local mode (see mlflow_load_s, partitions)",
           "command": " ".join([".venv/bin/python bench/inference_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    if args.out.resolve() == (RESULTS / "inference.json").resolve():
        from bench.report import write_benchmarks_md

        write_benchmarks_md(RESULTS, REPO / "BENCHMARKS.md")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
