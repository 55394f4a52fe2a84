"""Ingest new text files into the text table (plus quarantine table, ledger and run summary).

    ./spark-submit.sh jobs/ingest_text.py [--profile local|standalone|yarn|k8s] [--set ingest_text.format=delta]

Settings: conf/base.yaml section ingest_text, overlaid by conf/pipelines/ingest_text.yaml. Exit codes:
0 done (counts reconciled), 1 failed, 2 bad configuration.
"""
from __future__ import annotations

import sys
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.ingest_text import ingest_text


def main(argv: Sequence[str] | None = None) -> int:
    run_id, report = run_spark_pipeline(argv, description=__doc__, pipeline="ingest_text", fn=ingest_text)
    print(f"ingest_text {run_id}: {report.counts.describe()}")
    print(f"summary: {report.summary['summary_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
