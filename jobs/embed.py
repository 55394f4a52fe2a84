"""Embed a table with a registered torch model and index the vectors for nearest-neighbour search.

    ./spark-submit.sh jobs/embed.py --pipeline image_classification          # every image, then the HNSW index
    ./spark-submit.sh jobs/embed.py --pipeline sentiment --set embed.split=test
    ./spark-submit.sh jobs/embed.py --pipeline image_classification --similar-to auto   # then the 5 nearest rows

Writes embed.output (one row per input row: its key, split, label, source path, the unit vector or the reason it was
refused, model_uri, run_id) and, with embed.index, <output>/_index/<model>-v<version>/ (faiss HNSW index, the keys in
index order, a manifest). Incremental: rows this model version embedded before are skipped. --similar-to KEY (a
sha256 / record_id, or auto = the first test row) then prints the --k nearest rows from the index with their labels
and cosine similarity; --duplicates COSINE writes the near-duplicate pairs (each row's 10 nearest at or above that
similarity) to <output>/_duplicates/<model>-v<version>. Settings: conf/base.yaml section embed. Exit codes: 0 done,
1 failed, 2 bad configuration.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.embed import embed, find_duplicates, similar

PIPELINES = ("image_classification", "sentiment")


def main(argv: Sequence[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--similar-to", default=None, help="a row key, or auto (the first test row): print its nearest rows")
    own.add_argument("--k", type=int, default=5)
    own.add_argument("--duplicates", type=float, default=None, metavar="COSINE",
                     help="also write the near-duplicate pairs at or above this cosine similarity (e.g. 0.99)")
    known, rest = own.parse_known_args(argv)

    def run(spark: Any, cfg: Any, run_id: str) -> tuple[Any, Any, Any]:
        report = embed(spark, cfg, run_id)
        wanted = known.similar_to
        nearest = similar(spark, cfg, None if wanted == "auto" else wanted, known.k) if wanted else None
        duplicates = find_duplicates(spark, cfg, known.duplicates) if known.duplicates is not None else None
        return report, nearest, duplicates

    run_id, (report, nearest, duplicates) = run_spark_pipeline(rest, description=__doc__, pipeline=None, fn=run,
                                                               choices=PIPELINES)
    print(f"embed {run_id}: {report.describe()}")
    if duplicates:
        print(f"near-duplicates: {duplicates[1]} pairs at cosine >= {known.duplicates} in {duplicates[0]}")
    if nearest:
        key, hits = nearest
        print(f"nearest to {key}: " + "; ".join(f"{h.key} ({h.label}, cosine {h.similarity:.3f})" for h in hits))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
