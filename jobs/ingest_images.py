"""Ingest new images files into the images table (plus quarantine table, ledger and run summary).

    ./spark-submit.sh jobs/ingest_images.py [--profile local|standalone|yarn|k8s] [--set ingest_images.format=delta]

Settings: conf/base.yaml section ingest_images, overlaid by conf/pipelines/ingest_images.yaml. Exit codes:
0 done (counts reconciled), 1 failed, 2 bad configuration.
"""
from __future__ import annotations

import sys
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.ingest_images import ingest_images


def main(argv: Sequence[str] | None = None) -> int:
    run_id, report = run_spark_pipeline(argv, description=__doc__, pipeline="ingest_images", fn=ingest_images)
    print(f"ingest_images {run_id}: {report.counts.describe()}")
    print(f"summary: {report.summary['summary_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
