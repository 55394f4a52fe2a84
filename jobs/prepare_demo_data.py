"""Write the demo's landing data: Fashion-MNIST as PNG class folders, and the tweets CSV.

    .venv/bin/python jobs/prepare_demo_data.py [--set paths.data_dir=data]

Idempotent: files already in place are kept. Needs no Spark.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from dlspark.cli import config_from_args, job_parser, run_job
from dlspark.datasets.fashion_mnist import write_png_tree
from dlspark.datasets.tweets import copy_tweets
from dlspark.paths import resolve_path
from dlspark.runlog import new_run_id, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    args = job_parser(__doc__).parse_args(argv)
    cfg = config_from_args(args, pipeline=("ingest_images", "ingest_text"))
    setup_logging(cfg.run, new_run_id())
    images = Path(resolve_path(cfg.paths.data_dir, cfg.ingest_images.input))
    text = Path(resolve_path(cfg.paths.data_dir, cfg.ingest_text.input))
    n_images = write_png_tree(images)
    csv = copy_tweets(text)
    print(f"landing data ready: {n_images} Fashion-MNIST PNGs under {images}; tweets CSV at {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
