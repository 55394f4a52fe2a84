"""Hyperparameter search with Optuna: trials run in parallel as Spark tasks, each a nested MLflow run.

    ./spark-submit.sh jobs/tune.py --pipeline image_classification --set tune.n_trials=8 --set tune.epochs=2
    ./spark-submit.sh jobs/tune.py --pipeline image_classification --profile standalone --set tune.parallelism=4

then train the full model with the best params (a config layer written by the study):

    ./spark-submit.sh jobs/train.py --pipeline image_classification --conf data/tuning/tune-image_classification/best.yaml

Settings: conf/base.yaml section tune (space, n_trials, parallelism, per-trial caps epochs/limit_rows/
max_steps_per_epoch), overlaid by conf/pipelines/<pipeline>.yaml; the objective is train.monitor on the val split.
The study is stored in tune.storage (default sqlite under <data_dir>/tuning/): rerunning with the same
tune.study runs only the trials still missing. Exit codes: 0 done, 1 failed (also: no trial completed),
2 bad configuration (e.g. a tune.space key that is not a train.* value).
"""
from __future__ import annotations

import sys
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.tune import tune_model

PIPELINES = ("image_classification", "sentiment")


def main(argv: Sequence[str] | None = None) -> int:
    run_id, report = run_spark_pipeline(argv, description=__doc__, pipeline=None, fn=tune_model, choices=PIPELINES)
    s = report.summary
    failed = sum(t["state"] == "FAIL" for t in report.trials)
    print(f"tune {run_id}: study {s['study']}: {s['new_trials']} new trials, {s['trials']} in all ({failed} failed)")
    for t in report.trials:
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        error = f" error: {t['error'].splitlines()[0]}" if t.get("error") else ""
        print(f"  trial {t['number']:3d} {t['state']:8s} {value:>8s} {t['params']}{error}")
    print(f"best trial {report.best_number}: {s['metric']}={report.best_value:.4f} {report.best_params}")
    print(f"best config: {report.best_yaml} (use: jobs/train.py --conf {report.best_yaml})")
    print(f"mlflow parent run {report.parent_run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
