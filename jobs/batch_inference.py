"""Score an ingested table with a registered model and write a predictions table (partitioned by date).

    ./spark-submit.sh jobs/batch_inference.py --pipeline image_classification --set inference.split=test
    ./spark-submit.sh jobs/batch_inference.py --pipeline sentiment --set inference.model=models:/dlspark-sentiment/1
    ./spark-submit.sh jobs/batch_inference.py --compare-challenger --set serve.rollout.mode=ab --set serve.rollout.split=0.2

The model defaults to models:/<mlflow.registered_model>@champion (inference.model takes any version, alias
or runs:/ URI; inference.runtime picks what runs it: auto = its fastest parity-checked export, see README).
--compare-challenger also scores the roll-out's challenger (serve.rollout.challenger, default the registered model's
serve.rollout.challenger_alias) into the same table and writes a comparison report (agreement, both accuracies, and
the accuracy of the answers serve.rollout's split would have given, rows assigned by their id as serving assigns
requests by x-rollout-key) to <output>/_dlspark/comparisons/. Settings: conf/base.yaml
section inference, overlaid by conf/pipelines/<pipeline>.yaml. Rerunning on the same input version with the
same model version writes nothing. Exit codes: 0 done, 1 failed, 2 bad configuration, 3 accuracy differs from
training's test accuracy by more than --max-accuracy-gap.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.batch_inference import compare_challenger, score_table

PIPELINES = ("image_classification", "sentiment")
EXIT_ACCURACY_GAP = 3


def main(argv: Sequence[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--max-accuracy-gap", type=float, default=None,
                     help="exit 3 when |accuracy - training test_accuracy| exceeds this (labelled input only)")
    own.add_argument("--compare-challenger", action="store_true",
                     help="also score serve.rollout's challenger and write the comparison report")
    known, rest = own.parse_known_args(argv)
    gap = known.max_accuracy_gap
    if known.compare_challenger:
        run_id, comparison = run_spark_pipeline(rest, description=__doc__, pipeline=None, fn=compare_challenger,
                                                choices=PIPELINES)
        print(f"batch_inference {run_id}: {comparison.describe()}")
        return 0
    run_id, report = run_spark_pipeline(rest, description=__doc__, pipeline=None, fn=score_table, choices=PIPELINES)
    print(f"batch_inference {run_id}: {report.describe()}")
    if report.error_reasons:
        print(f"errors by reason: {report.error_reasons}")
    if gap is not None and report.accuracy is not None and report.train_test_accuracy is not None:
        diff = abs(report.accuracy - report.train_test_accuracy)
        print(f"accuracy from written predictions {report.accuracy:.4f} vs training test_accuracy "
              f"{report.train_test_accuracy:.4f}: |diff| {diff:.4f} (allowed {gap})")
        if diff > gap:
            return EXIT_ACCURACY_GAP
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
