"""Nearest neighbours over real embeddings: faiss HNSW vs exact top-k, recall@10 and queries/s.

    .venv/bin/python bench/ann_bench.py                      # every Fashion-MNIST image of the demo table (70k)
    .venv/bin/python bench/ann_bench.py --images 5000 --queries 200   # smoke

The embeddings are the champion CNN's head input (``dlspark.embeddings.vectors.embed``), computed here in one
process (the Spark job that writes them as a table is not built yet). The index is ``build_hnsw`` (M 32,
efConstruction 200); recall@10 of ``--queries`` held-in rows against ``exact_topk`` at several ``ef_search``;
queries/s one at a time (a serving request) and in one batch, 2 threads. Results: ``bench/results/ann.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def image_vectors(data_dir: Path, limit: int | None) -> tuple[np.ndarray, float, str]:
    """(unit vectors, rows/s of embedding, model label) of the demo image table's rows."""
    import pyarrow.dataset as ds
    import torch

    from dlspark.config import MlflowConfig
    from dlspark.embeddings.vectors import embed
    from dlspark.feed.decode import normalize_images
    from dlspark.inference.model import load_model
    from dlspark.inference.predictors import eager_module
    from dlspark.tracking import resolve_tracking

    bundle = load_model(resolve_tracking(MlflowConfig(), str(data_dir)), "models:/dlspark-fashion-mnist@champion")
    model = eager_module(bundle.ref.uri, bundle.local_dir)
    pre = bundle.preprocessing
    table = ds.dataset(str(data_dir / "tables" / "images"), format="parquet", partitioning="hive").to_table(columns=["pixels"])
    if limit:
        table = table.slice(0, limit)
    pixels = table.column("pixels").to_pylist()
    shape = pre["image_shape"]
    out, start = [], time.perf_counter()
    for i in range(0, len(pixels), 512):
        batch = np.stack([np.frombuffer(p, np.uint8).reshape(shape) for p in pixels[i:i + 512]])
        x = torch.from_numpy(normalize_images(batch, pre["mean"], pre["std"], channels_last=False))
        out.append(embed(model, x, len(bundle.labels)))
    return np.concatenate(out), len(pixels) / (time.perf_counter() - start), bundle.ref.label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "lib"), str(REPO)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import torch

    from dlspark.embeddings.ann import build_hnsw, exact_topk, recall_at_k, search

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    vectors, embed_rate, model = image_vectors(args.data_dir, args.images or None)
    queries = vectors[np.random.default_rng(0).choice(len(vectors), args.queries, replace=False)]
    t0 = time.perf_counter()
    truth = exact_topk(vectors, queries, 10)
    exact_qps = len(queries) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    index = build_hnsw(vectors)
    build_s = time.perf_counter() - t0
    rows = []
    for ef in (16, 32, 64, 128, 256):
        t0 = time.perf_counter()
        found = search(index, queries, 10, ef_search=ef)
        batch_qps = len(queries) / (time.perf_counter() - t0)
        single = []
        for q in queries[:200]:
            t1 = time.perf_counter()
            search(index, q[None, :], 10, ef_search=ef)
            single.append((time.perf_counter() - t1) * 1000)
        rows.append({"ef_search": ef, "recall_at_10": round(recall_at_k(found, truth), 4), "batch_queries_per_s": round(batch_qps),
                     "single_query_p50_ms": round(float(np.percentile(single, 50)), 3),
                     "single_query_p95_ms": round(float(np.percentile(single, 95)), 3)})
        print(json.dumps(rows[-1]))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    out = {"benchmark": "ann", "kind": "image", "model": model, "vectors": int(len(vectors)), "dim": int(vectors.shape[1]),
           "queries": len(queries), "embed_rows_per_s": round(embed_rate), "exact_queries_per_s": round(exact_qps),
           "index": "faiss IndexHNSWFlat, M 32, efConstruction 200, inner product", "build_s": round(build_s, 1),
           "results": rows, "target": {"recall_at_10": 0.95, "single_query_p95_ms": 50},
           "machine": {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__,
                       "load_average_at_start": [round(v, 1) for v in os.getloadavg()]},
           "command": " ".join([".venv/bin/python bench/ann_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ann.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
