"""Streaming sentiment throughput and micro-batch latency at a fixed input rate, measured in one process.

    .venv/bin/python bench/stream_bench.py --rates 50 --seconds 120           # test MiniLM model, registered here
    .venv/bin/python bench/stream_bench.py --rates 50 100 200 --seconds 120 --data-dir data \
        --model models:/dlspark-sentiment@champion --runtime onnx-int8      # the curve in BENCHMARKS.md
    .venv/bin/python bench/stream_bench.py --rates 10 --seconds 15 --no-write  # smoke: print, keep results untouched

After a warm-up file has been scored (the model loads on the first batch), the replay generator writes
tweets as JSON lines at --rate messages/s (one file per --tick) for --seconds, in a thread, while
``pipelines.stream_sentiment`` runs on local[2] (each micro-batch spread over 2 scoring tasks) until its input
has been idle for --idle seconds. Figures come from the predictions query's StreamingQueryProgress, the warm-up
batch left out: sustained rate = rows / (first trigger start to last batch end); busy rate = rows / time spent
in triggers; latency = durationMs.triggerExecution of batches with input; lag = scored_at (batch start) - file
arrival, per row, from the predictions sink; sink lag = the commit of the sink batch holding the row (the mtime
of its ``_spark_metadata`` entry) - file arrival. --malformed of the lines are broken (quarantined, with reasons).
Without --data-dir the MiniLM test model (pretrained encoder, untrained
head: the same compute as a trained one) is registered in the work dir.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CORES = 2
WARMUP = 16                     # messages scored before the timed replay starts (the model loads on the first batch)
log = logging.getLogger("bench")


def start_replay(spark, landing: Path, rate: float, tick: float, seconds: float, errors: list,  # noqa: ANN001
                 malformed: float = 0.0) -> threading.Thread:
    """A thread that writes a warm-up file, waits until the stream has scored it (model loaded), then writes
    tweets into ``landing`` at ``rate`` msg/s for ``seconds``."""
    from dlspark.datasets.replay import ReplaySpec, replay, synthetic_messages, tweet_messages
    from dlspark.datasets.tweets import tweets_csv_path

    def run() -> None:
        try:
            now = datetime.now(timezone.utc)
            replay(synthetic_messages(WARMUP, start=now, id_prefix="warmup"), landing,
                   ReplaySpec(rate=WARMUP, prefix="warmup"), pace=False)
            _wait_for_first_batch(spark)
            messages = tweet_messages(tweets_csv_path(), start=datetime.now(timezone.utc), spacing_s=1 / rate)
            report = replay(messages, landing, ReplaySpec(rate=rate, tick_s=tick, malformed_fraction=malformed),
                            max_seconds=seconds)
            log.info("replay wrote %d lines in %d files over %.1f s", report.lines, len(report.files), report.seconds)
        except Exception as exc:  # noqa: BLE001 - re-raised by the main thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="replay", daemon=True)
    thread.start()
    return thread


def _wait_for_first_batch(spark, timeout_s: float = 600) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for q in spark.streams.active:
            if q.name == "predictions" and any(p["numInputRows"] > 0 for p in q.recentProgress):
                return
        time.sleep(0.2)
    raise TimeoutError(f"the stream scored no warm-up row in {timeout_s} s")


def batch_figures(history: list[dict]) -> dict:
    """Sustained rows/s (rows / first trigger start to last batch end), busy rows/s (rows / time in triggers) and
    latency percentiles of the batches with input; the first (the warm-up file, model load) is left out."""
    with_input = [b for b in history if b["numInputRows"] > 0]
    steady = with_input[1:] or with_input
    start = _epoch(steady[0]["timestamp"])
    end = max(_epoch(b["timestamp"]) + b["triggerExecutionMs"] / 1000 for b in steady)
    rows = sum(b["numInputRows"] for b in steady)
    ms = np.array([b["triggerExecutionMs"] for b in steady], float)
    capacity = rows / max(ms.sum() / 1000, 1e-9)
    return {"batches": len(with_input), "steady_batches": len(steady), "steady_rows": rows,
            "sustained_rows_per_s": round(rows / max(end - start, 1e-9), 1), "busy_rows_per_s": round(capacity, 1),
            "batch_ms": {"p50": round(float(np.percentile(ms, 50))), "p95": round(float(np.percentile(ms, 95))),
                         "max": round(float(ms.max()))},
            "first_batch_ms": with_input[0]["triggerExecutionMs"], "mean_rows_per_batch": round(rows / len(steady), 1)}


def lag_seconds(spark, output: str) -> dict:  # noqa: ANN001
    """Per-row seconds from file arrival to the start of the batch that scored it (p50/p95/max)."""
    from pyspark.sql import functions as F

    lag = spark.read.parquet(output).select(
        (F.col("scored_at").cast("double") - F.col("arrival_time").cast("double")).alias("lag"))
    p50, p95, top = lag.agg(F.percentile_approx("lag", 0.5), F.percentile_approx("lag", 0.95), F.max("lag")).first()
    return {"p50": round(p50, 2), "p95": round(p95, 2), "max": round(top, 2)}


def commit_times(output: str) -> dict[str, float]:
    """Output file name -> when the file sink committed it: the mtime of the ``_spark_metadata`` log entry of the
    batch that first lists it (compacted logs repeat earlier entries, so the first listing counts)."""
    meta = Path(output) / "_spark_metadata"
    logs = sorted((f for f in meta.iterdir() if f.name.split(".")[0].isdigit()), key=lambda f: int(f.name.split(".")[0]))
    out: dict[str, float] = {}
    for f in logs:
        mtime = f.stat().st_mtime
        for line in f.read_text().splitlines()[1:]:          # the first line is the log version
            name = Path(json.loads(line)["path"]).name
            out.setdefault(name, mtime)
    return out


def sink_lag_seconds(spark, output: str) -> dict:  # noqa: ANN001
    """Per-row seconds from file arrival to the commit of the sink batch holding it (the row is readable then)."""
    import pandas as pd
    from pyspark.sql import functions as F

    rows = (spark.read.parquet(output).select(F.col("arrival_time").cast("double").alias("arrival"),
                                              F.input_file_name().alias("file")).toPandas())
    commits = commit_times(output)
    names = rows["file"].map(lambda p: Path(p).name)
    missing = int((~names.isin(list(commits))).sum())
    lag = pd.to_numeric(names.map(commits), errors="coerce") - rows["arrival"]
    return {"p50": round(float(lag.quantile(0.5)), 2), "p95": round(float(lag.quantile(0.95)), 2),
            "max": round(float(lag.max()), 2), "rows_without_commit": missing}


def run(args: argparse.Namespace, rate: float) -> dict:
    from dlspark.config import SparkConfig, load_config
    from dlspark.spark.session import build_spark_session
    from pipelines.stream_sentiment import RunMode, stream_sentiment

    work = Path(args.workdir) / f"rate-{rate:g}"
    for sub in ("landing", "tables", "checkpoints"):
        shutil.rmtree(work / sub, ignore_errors=True)
    data_dir = Path(args.data_dir) if args.data_dir else work
    sets = [f"paths.data_dir={data_dir}", f"stream.input={work}/landing", f"stream.output={work}/tables/predictions",
            f"stream.quarantine={work}/tables/quarantine", f"stream.aggregates={work}/tables/aggregates",
            f"stream.checkpoint={work}/checkpoints", f"stream.trigger_seconds={args.trigger}",
            f"stream.side_trigger_seconds={args.side_trigger}",
            f"stream.score_partitions={CORES}", f"inference.runtime={args.runtime}"]
    if args.model:
        sets.append(f"inference.model={args.model}")
    elif not args.data_dir:
        sys.path.insert(0, str(REPO))
        from tests.inference_models import register_text_model

        if not (work / "mlflow").exists():
            register_text_model(work)
        sets.append("mlflow.registered_model=test-sentiment")
    cfg = load_config(pipeline="sentiment", overrides=sets)
    spark = build_spark_session(SparkConfig(master=f"local[{CORES}]", driver_memory="4g", ui_enabled=False,
                                            shuffle_partitions=CORES))
    errors: list = []
    replay = start_replay(spark, work / "landing", rate, args.tick, args.seconds, errors, args.malformed)
    report = stream_sentiment(spark, cfg, "bench", RunMode(until_idle_s=args.idle))
    replay.join()
    if errors:
        raise errors[0]
    figures = batch_figures(report.history["predictions"])
    import os
    if os.environ.get("DBG"):
        for name, h in report.history.items():
            for b in h:
                print("DBG", name, b["batchId"], b["numInputRows"], b["durationMs"])
    return {"benchmark": "stream", "input_rate": rate, "tick_s": args.tick, "seconds": args.seconds,
            "trigger_s": args.trigger, "model": report.model, "runtime": report.runtime, "malformed_fraction": args.malformed,
            "lines": report.lines, "predicted": report.predicted, "quarantine_reasons": quarantine_reasons(spark, work),
            "quarantined": report.quarantined, "windows": report.windows, "reconciled": report.reconciled,
            **figures, "lag_s": lag_seconds(spark, f"{work}/tables/predictions"),
            "sink_lag_s": sink_lag_seconds(spark, f"{work}/tables/predictions"),
            "keeps_up": figures["sustained_rows_per_s"] >= 0.95 * rate,
            "machine": _machine(), "command": " ".join(["bench/stream_bench.py", *sys.argv[1:]]),
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def quarantine_reasons(spark, work: Path) -> dict[str, int]:  # noqa: ANN001
    path = work / "tables" / "quarantine"
    if not (path / "_spark_metadata").exists():
        return {}
    return {r["reason"]: int(r["count"]) for r in spark.read.parquet(str(path)).groupBy("reason").count().collect()}


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _machine() -> dict:
    import platform

    import pyspark
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "spark_cores": CORES, "python": platform.python_version(), "pyspark": pyspark.__version__,
            "torch": torch.__version__}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0], help="input messages per second, one run each")
    parser.add_argument("--runtime", default="auto", help="inference.runtime (auto | source | onnx | onnx-int8 | torchscript)")
    parser.add_argument("--malformed", type=float, default=0.01, help="fraction of malformed lines (quarantined)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the generator writes")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between input files")
    parser.add_argument("--trigger", type=float, default=1.0, help="stream.trigger_seconds")
    parser.add_argument("--side-trigger", type=float, default=10.0, help="stream.side_trigger_seconds")
    parser.add_argument("--idle", type=float, default=10.0, help="stop once the input has been idle this long")
    parser.add_argument("--data-dir", default=None, help="paths.data_dir holding the MLflow store (default: the work dir)")
    parser.add_argument("--model", default=None, help="inference.model URI (default: the registered champion)")
    parser.add_argument("--workdir", default="/tmp/dlspark-stream-bench")
    parser.add_argument("--no-write", action="store_true", help="print the result only")
    parser.add_argument("--out", default="stream.json", help="result file under bench/results (one per model compared)")
    args = parser.parse_args()
    runs = []
    for rate in args.rates:
        runs.append(run(args, rate))
        print(json.dumps(runs[-1], indent=2), flush=True)
    kept = [r["input_rate"] for r in runs if r["keeps_up"] and r["batch_ms"]["p95"] < 2000 and r["sink_lag_s"]["p95"] < 3]
    result = {"benchmark": "stream", "runs": runs, "highest_rate_within_targets": max(kept) if kept else None,
              "targets": {"batch_p95_ms": 2000, "sink_lag_p95_s": 3, "sustained_over_input": 0.95},
              "command": " ".join(["bench/stream_bench.py", *sys.argv[1:]]),
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / args.out).write_text(json.dumps(result, indent=2))
        sys.path.insert(0, str(REPO))
        from bench.report import write_benchmarks_md

        write_benchmarks_md(RESULTS, REPO / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
