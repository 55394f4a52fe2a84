"""Explain a registered torch model's predictions: Integrated Gradients (Captum) per row, on the executors.

    ./spark-submit.sh jobs/explain.py --pipeline image_classification              # 200 test images
    ./spark-submit.sh jobs/explain.py --pipeline sentiment --set explain.rows=1000 --set explain.steps=16
    ./spark-submit.sh jobs/explain.py --pipeline sentiment --set explain.rows=null  # the whole test split

Writes explain.output (one row per input row: prediction, probability, the attribution map or token scores, the
tokens, IG's convergence error, or the reason a row was refused), explain.report_dir/<run id>/report.html (per
class, the rows with the strongest attributions: images with heat maps, texts with tokens shaded) and an MLflow
run. Settings: conf/base.yaml section explain. Exit codes: 0 done, 1 failed, 2 bad configuration.
"""
from __future__ import annotations

import sys
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.explain import explain

PIPELINES = ("image_classification", "sentiment")


def main(argv: Sequence[str] | None = None) -> int:
    run_id, report = run_spark_pipeline(argv, description=__doc__, pipeline=None, fn=explain, choices=PIPELINES)
    print(f"explain {run_id}: {report.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
