"""Smoke-test a deployment: Python tasks run on executors, with the shipped dlspark and the right python.

    ./spark-submit.sh jobs/spark_smoke.py --profile standalone --out data/smoke.json --min-executors 2

Writes driver pid/python and, per mapInPandas task, pid, python, host, dlspark file, rows as JSON to --out;
prints the distinct executor Python pids. Exit 1 if fewer than --min-executors registered, 2 on bad config.
"""
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from dlspark.cli import EXIT_FAILED, EXIT_OK, config_from_args, job_parser, run_job
from dlspark.spark.connect import require_classic
from dlspark.spark.session import build_spark_session

TASK_SCHEMA = "pid long, python string, host string, dlspark string, rows long"


def where_am_i(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Runs on executors: this Python worker's pid, interpreter and where dlspark is imported from."""
    import dlspark

    row = {"pid": os.getpid(), "python": sys.executable, "host": socket.gethostname(), "dlspark": dlspark.__file__}
    yield pd.DataFrame([{**row, "rows": sum(len(batch) for batch in batches)}])


def wait_for_executors(spark, count: int, timeout_s: float = 90.0) -> int:
    """Wait until ``count`` executors registered (the driver is listed too); return how many did.

    Only the JVM's status tracker lists executors (pyspark's StatusTracker does not): classic sessions only."""
    if count <= 0:
        return 0
    require_classic(spark, "--min-executors (the JVM's executor list)", "--min-executors 0")
    deadline = time.monotonic() + timeout_s
    while (seen := len(spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()) - 1) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--out", required=True, help="local path of the JSON result")
    parser.add_argument("--min-executors", type=int, default=0, help="wait up to 90 s for this many executors")
    args = parser.parse_args(argv)
    spark = build_spark_session(config_from_args(args, pipeline=None).spark)
    try:
        executors = wait_for_executors(spark, args.min_executors)
        tasks = [row.asDict() for row in spark.range(1000, numPartitions=8).mapInPandas(where_am_i, TASK_SCHEMA).collect()]
    finally:
        spark.stop()
    pids = len({t["pid"] for t in tasks})
    result = {
        "driver_pid": os.getpid(), "driver_python": sys.executable, "executors": executors,
        "distinct_executor_pids": pids, "tasks": tasks,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"distinct executor python pids: {pids} ({executors} executors registered, --min-executors {args.min_executors})")
    return EXIT_OK if executors >= args.min_executors else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(run_job(main))
