"""Tiny landing data shaped like the demo's, for running the notebooks in CI.

Images: 28x28 greyscale PNGs in Fashion-MNIST class folders (as ``jobs/prepare_demo_data.py`` writes them), each
class a different, noisy brightness pattern so one epoch can learn something, plus one corrupt file for the
quarantine. Text: a ``sentiment,confidence,text`` CSV (the tweets CSV's columns) of
:func:`dlspark.datasets.replay.synthetic_messages`, plus one row with an empty text.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from dlspark.datasets.replay import synthetic_messages
from tests.image_zoo import corrupt_png, write_tree

# folder name -> pattern; the names are labels of conf/pipelines/ingest_images.yaml
CLASSES = {"T-shirt_top": "top", "Trouser": "left", "Bag": "centre", "Sneaker": "bottom"}
CORRUPT_FILE = "Bag/corrupt.png"


def image_files(n_per_class: int = 20, seed: int = 0) -> dict[str, bytes]:
    """``<class>/<i>.png`` -> PNG bytes: a bright block where the class says, on noise (distinct bytes each)."""
    rng = np.random.default_rng(seed)
    files = {}
    for name, where in CLASSES.items():
        for i in range(n_per_class):
            arr = rng.normal(40, 20, (28, 28))
            arr[_block(where)] += 160
            buf = io.BytesIO()
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").save(buf, "PNG")
            files[f"{name}/{i:03d}.png"] = buf.getvalue()
    files[CORRUPT_FILE] = corrupt_png()
    return files


def write_landing(data_dir: Path, *, n_per_class: int = 20, n_texts: int = 100) -> dict[str, int]:
    """Write the images under ``landing/fashion_mnist`` and the CSV under ``landing/tweets``; returns the counts."""
    images = image_files(n_per_class)
    write_tree(data_dir / "landing" / "fashion_mnist", images)
    csv_path = data_dir / "landing" / "tweets" / "tweets.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentiment", "confidence", "text"])
        for m in synthetic_messages(n_texts, start=start):
            writer.writerow([m["label"], "1.0", m["text"]])
        writer.writerow(["positive", "1.0", ""])
    return {"images": len(images), "images_bad": 1, "texts": n_texts + 1, "texts_bad": 1}


def _block(where: str) -> tuple[slice, slice]:
    return {"top": (slice(2, 10), slice(4, 24)), "bottom": (slice(18, 26), slice(4, 24)),
            "left": (slice(4, 24), slice(2, 10)), "centre": (slice(9, 19), slice(9, 19))}[where]
