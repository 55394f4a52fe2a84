"""Train a model on an ingested table, track it in MLflow and register it (champion only if it is better).

    ./spark-submit.sh jobs/train.py --pipeline image_classification [--set train.backend=horovod]
    ./spark-submit.sh jobs/train.py --pipeline sentiment [--set train.feed.feeder=petastorm]

Settings: conf/base.yaml sections train and mlflow, overlaid by conf/pipelines/<pipeline>.yaml. Rerunning
with the same train.run_name resumes from the latest checkpoint. Exit codes: 0 done, 1 failed, 2 bad configuration.
"""
from __future__ import annotations

import sys
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.train import train_model

PIPELINES = ("image_classification", "sentiment", "sentiment_student")


def main(argv: Sequence[str] | None = None) -> int:
    run_id, report = run_spark_pipeline(argv, description=__doc__, pipeline=None, fn=train_model, choices=PIPELINES)
    s = report.summary
    test = ", ".join(f"{k}={v:.4f}" for k, v in sorted(s["test_metrics"].items()) if isinstance(v, float))
    print(f"train {run_id}: {s['task']} on {s['backend']} x{s['world_size']} ({s['feeder']} feeder), "
          f"{s['epochs_trained']} epochs, best epoch {s['best_epoch']}; test: {test}")
    if s["registered_model"] and not s["registered_now"]:
        print(f"kept {s['registered_model']} version {s['version']}: {report.registration.reason}")
    elif s["registered_model"]:
        role = "champion" if s["champion"] else "candidate (champion unchanged)"
        print(f"registered {s['registered_model']} version {s['version']} as {role}; {report.registration.reason}")
    print(f"mlflow run {s['mlflow_run_id']}; browse: {s['mlflow_ui']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
