"""Daily batch for cron/Airflow: incremental ingest -> score the new rows with the champion -> drift check.

    ./spark-submit.sh jobs/scheduled.py --pipeline image_classification [--date 2026-11-23]
    ./spark-submit.sh jobs/scheduled.py --pipeline sentiment

One idempotent run per date (default today, UTC): rerunning a finished date changes nothing. The pipeline
layers are those of jobs/ingest_*.py and jobs/batch_inference.py. Drift is flagged in the run record
(<data_dir>/runs/scheduled/<task>/<date>.json), not fatal: alert on it from the scheduler.
Exit codes: 0 done, 1 failed, 2 bad configuration.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from functools import partial
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.batch_inference import score_table
from pipelines.ingest_images import ingest_images
from pipelines.ingest_text import ingest_text
from pipelines.monitor import monitor
from pipelines.scheduled import ScheduledSteps, run_scheduled

LAYERS = {"image_classification": ["ingest_images", "image_classification"], "sentiment": ["ingest_text", "sentiment"]}
STEPS = {"image_classification": ScheduledSteps(ingest=ingest_images, score=score_table, monitor=monitor),
         "sentiment": ScheduledSteps(ingest=ingest_text, score=score_table, monitor=monitor)}


def main(argv: Sequence[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--date", type=date.fromisoformat, default=None, help="run date YYYY-MM-DD (default today, UTC)")
    own.add_argument("--pipeline", choices=list(LAYERS), default="image_classification")
    known, rest = own.parse_known_args(argv)
    _, record = run_spark_pipeline(rest, description=__doc__, pipeline=LAYERS[known.pipeline],
                                   fn=partial(run_scheduled, steps=STEPS[known.pipeline], day=known.date))
    print(f"scheduled {record['date']}: " + json.dumps({k: v for k, v in record.items() if k != "date"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
