"""Nearest neighbours over real embeddings: faiss HNSW vs exact top-k, recall@10 and queries/s.

    .venv/bin/python bench/ann_bench.py --kind image          # every Fashion-MNIST image of the demo table (70k)
    .venv/bin/python bench/ann_bench.py --kind text           # 106k texts: the demo's 36k tweets + 70k spliced ones
    .venv/bin/python bench/ann_bench.py --kind image --rows 5000 --queries 200   # smoke

The embeddings are the champion's head input (``dlspark.embeddings.vectors.embed_inputs``, what the Spark job and
``/similar`` compute), here in one process: the CNN's penultimate layer for images, the fine-tuned MiniLM's mean
pooling for texts. The demo has 36,140 distinct tweets; to index 100k+ texts, ``--kind text`` adds texts spliced from
two different tweets (the first half of one's words, the second half of another's; seeded), real words and
lengths in new combinations. The index is ``build_hnsw`` (M 32, efConstruction 200) over all rows but ``--queries``
held out; recall@10 of the held-out queries (not in the index: what ``POST /similar`` asks) and of as many indexed
rows (``GET /similar?id=``) against ``exact_topk`` at several ``ef_search``; queries/s one at a time and in one batch,
2 threads. The vectors are cached under data/cache/. Results: ``bench/results/ann-<kind>.json``.
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
MODELS = {"image": "models:/dlspark-fashion-mnist@champion", "text": "models:/dlspark-sentiment@champion"}
TABLES = {"image": ("images", "pixels"), "text": ("text", "text")}


def spliced_texts(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` new texts, each the first half (by words) of one text and the second half of another."""
    rng = np.random.default_rng(seed)
    words = [t.split() for t in texts]
    out = []
    while len(out) < n:
        a, b = rng.integers(0, len(words), 2)
        if a == b or len(words[a]) < 2 or len(words[b]) < 2:
            continue
        out.append(" ".join(words[a][:len(words[a]) // 2] + words[b][len(words[b]) // 2:]))
    return out


def embed_rows(data_dir: Path, kind: str, rows: int | None, extra_texts: int) -> tuple[np.ndarray, float, str, dict]:
    """(unit vectors, rows/s of embedding, model label, what was embedded) of the demo table's rows."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from dlspark.config import MlflowConfig
    from dlspark.embeddings.vectors import embed_inputs
    from dlspark.inference.inputs import TextPreprocessing, image_inputs, text_inputs
    from dlspark.inference.model import load_model
    from dlspark.inference.predictors import eager_module
    from dlspark.text.tokenize import load_tokenizer
    from dlspark.tracking import resolve_tracking

    bundle = load_model(resolve_tracking(MlflowConfig(), str(data_dir)), MODELS[kind])
    model = eager_module(bundle.ref.uri, bundle.local_dir)
    pre = bundle.preprocessing
    folder, column = TABLES[kind]
    table = ds.dataset(str(data_dir / "tables" / folder), format="parquet", partitioning="hive").to_table(columns=[column])
    if rows:
        table = table.slice(0, rows)
    source = {"table_rows": table.num_rows}
    if kind == "text" and extra_texts:
        texts = table.column("text").to_pylist()
        table = pa.table({"text": texts + spliced_texts(texts, extra_texts)})
        source["spliced_texts"] = extra_texts
    tokenizer = load_tokenizer(TextPreprocessing.from_spec(pre).tokenizer) if kind == "text" else None
    out, start = [], time.perf_counter()
    for i in range(0, table.num_rows, 512):
        part = table.slice(i, 512)
        inputs = (image_inputs(part, pre["image_shape"]) if kind == "image"
                  else text_inputs(part, TextPreprocessing.from_spec(pre), tokenizer))
        if len(inputs.valid) != part.num_rows:
            raise SystemExit(f"rows {i}..{i + part.num_rows}: {len(inputs.valid)} of {part.num_rows} valid")
        out.append(embed_inputs(model, inputs, kind, pre, len(bundle.labels), 128))
        if i % 10240 == 0:
            print(f"embedded {i + part.num_rows} of {table.num_rows}", flush=True)
    return np.concatenate(out), table.num_rows / (time.perf_counter() - start), bundle.ref.label, source


def cached_vectors(data_dir: Path, kind: str, rows: int | None, extra_texts: int) -> tuple[np.ndarray, float, str, dict]:
    cache = data_dir / "cache" / f"ann-{kind}-{rows or 'all'}-{extra_texts}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return z["vectors"], float(z["rate"]), str(z["model"]), json.loads(str(z["source"]))
    vectors, rate, model, source = embed_rows(data_dir, kind, rows, extra_texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, rate=rate, model=model, source=json.dumps(source))
    return vectors, rate, model, source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("image", "text"), default="image")
    parser.add_argument("--rows", type=int, default=0, help="first N table rows only (0: all)")
    parser.add_argument("--spliced", type=int, default=70_000, help="texts spliced from two tweets, added (text only)")
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
    extra = args.spliced if args.kind == "text" else 0
    vectors, embed_rate, model, source = cached_vectors(args.data_dir, args.kind, args.rows or None, extra)
    order = np.random.default_rng(0).permutation(len(vectors))
    held_out = vectors[order[:args.queries]]
    indexed = vectors[np.sort(order[args.queries:])]
    held_in = indexed[np.random.default_rng(1).choice(len(indexed), args.queries, replace=False)]
    t0 = time.perf_counter()
    truth_out = exact_topk(indexed, held_out, 10)
    exact_qps = len(held_out) / (time.perf_counter() - t0)
    truth_in = exact_topk(indexed, held_in, 10)
    t0 = time.perf_counter()
    index = build_hnsw(indexed)
    build_s = time.perf_counter() - t0
    rows = []
    for ef in (16, 32, 64, 128, 256):
        t0 = time.perf_counter()
        found = search(index, held_out, 10, ef_search=ef)
        batch_qps = len(held_out) / (time.perf_counter() - t0)
        single = []
        for q in held_out[:200]:
            t1 = time.perf_counter()
            search(index, q[None, :], 10, ef_search=ef)
            single.append((time.perf_counter() - t1) * 1000)
        rows.append({"ef_search": ef, "recall_at_10": round(recall_at_k(found, truth_out), 4),
                     "recall_at_10_indexed": round(recall_at_k(search(index, held_in, 10, ef_search=ef), truth_in), 4),
                     "batch_queries_per_s": round(batch_qps),
                     "single_query_p50_ms": round(float(np.percentile(single, 50)), 3),
                     "single_query_p95_ms": round(float(np.percentile(single, 95)), 3)})
        print(json.dumps(rows[-1]))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    out = {"benchmark": "ann", "kind": args.kind, "model": model, "source": source, "vectors": int(len(indexed)),
           "dim": int(vectors.shape[1]), "queries": len(held_out), "embed_rows_per_s": round(embed_rate),
           "exact_queries_per_s": round(exact_qps),
           "index": "faiss IndexHNSWFlat, M 32, efConstruction 200, inner product", "build_s": round(build_s, 1),
           "results": rows, "target": {"recall_at_10": 0.95, "single_query_p95_ms": 50},
           "machine": {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__,
                       "load_average_at_start": [round(v, 1) for v in os.getloadavg()]},
           "command": " ".join([".venv/bin/python bench/ann_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ann-{args.kind}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
