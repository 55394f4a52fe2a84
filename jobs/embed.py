"""Embed a table with a registered torch model and index the vectors for nearest-neighbour search.

    ./spark-submit.sh jobs/embed.py --pipeline image_classification          # every image, then the HNSW index
    ./spark-submit.sh jobs/embed.py --pipeline sentiment --set embed.split=test

Writes embed.output (one row per input row: its key, split, label, source path, the unit vector or the reason it was
refused, model_uri, run_id) and, with embed.index, <output>/_index/<model>-v<version>/ (faiss HNSW index, the keys in
index order, a manifest). Incremental: rows this model version embedded before are skipped. Settings: conf/base.yaml
section embed. Exit codes: 0 done, 1 failed, 2 bad configuration.
"""
from __future__ import annotations

import sys
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.embed import embed

PIPELINES = ("image_classification", "sentiment")


def main(argv: Sequence[str] | None = None) -> int:
    run_id, report = run_spark_pipeline(argv, description=__doc__, pipeline=None, fn=embed, choices=PIPELINES)
    print(f"embed {run_id}: {report.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
