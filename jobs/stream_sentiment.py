"""Score a stream of JSON-line messages with the registered sentiment model; quarantine bad lines; window aggregates.

    ./spark-submit.sh jobs/stream_sentiment.py --pipeline sentiment --until-idle 30
    ./spark-submit.sh jobs/stream_sentiment.py --pipeline sentiment --available-now
    ./spark-submit.sh jobs/stream_sentiment.py --pipeline sentiment --set stream.trigger_seconds=2   # until stopped

Source: files dropped into stream.input (see jobs/replay_tweets.py), or Kafka (stream.source: kafka, needs the
connector package). The model defaults to models:/<mlflow.registered_model>@champion (inference.model overrides).
Sinks: stream.output (predictions), stream.quarantine (lines that cannot be scored, with a reason),
stream.aggregates (per stream.window: count and mean positive probability), each exactly-once with its own
checkpoint under stream.checkpoint, so a killed job restarted with the same settings writes every line once.
Exit codes: 0 done, 1 failed, 2 bad configuration (e.g. Kafka connector missing), 3 sinks do not reconcile.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.stream_sentiment import RunMode, stream_sentiment

PIPELINES = ("sentiment",)
EXIT_NOT_RECONCILED = 3


def main(argv: Sequence[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    how = own.add_mutually_exclusive_group()
    how.add_argument("--until-idle", type=float, default=None, metavar="SECONDS",
                     help="stop once no query has had input for this many seconds")
    how.add_argument("--available-now", action="store_true", help="process what is there now, then stop")
    known, rest = own.parse_known_args(argv)
    mode = RunMode(until_idle_s=known.until_idle, available_now=known.available_now)
    run_id, report = run_spark_pipeline(rest, description=__doc__, pipeline=None,
                                        fn=partial(stream_sentiment, mode=mode), choices=PIPELINES)
    print(f"stream_sentiment {run_id}: {report.describe()}")
    for name, figures in report.last_progress.items():
        print(f"  {name}: last batch {figures}")
    return EXIT_NOT_RECONCILED if report.reconciled is False else 0


if __name__ == "__main__":
    sys.exit(run_job(main))
