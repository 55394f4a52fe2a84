"""Nearest neighbours of unit vectors: exact top-k (numpy, the reference) and an approximate index (faiss HNSW).

Why faiss: the best-kept of the three candidates (faiss-cpu, usearch, hnswlib), with wheels for both of our numpy
stacks, exact and approximate indexes behind one API, and an HNSW graph whose recall / speed trade-off is one
query-time knob (``ef_search``). Vectors are unit length, so inner product is cosine similarity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Neighbours:
    """Per query: the ``k`` row positions found, best first, and their cosine similarities."""

    ids: np.ndarray      # [Q, k] int64 positions in the indexed vectors (-1: fewer than k vectors)
    scores: np.ndarray   # [Q, k] float32 cosine similarity


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, batch: int = 4096) -> Neighbours:
    """The true ``k`` nearest rows of ``vectors`` (by cosine) for each query, in query batches of ``batch``."""
    k = min(k, len(vectors))
    ids, scores = [], []
    for start in range(0, len(queries), batch):
        sims = queries[start:start + batch] @ vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        best = np.take_along_axis(top, order, axis=1)
        ids.append(best)
        scores.append(np.take_along_axis(sims, best, axis=1))
    return Neighbours(np.concatenate(ids).astype(np.int64), np.concatenate(scores).astype(np.float32))


def build_hnsw(vectors: np.ndarray, m: int = 32, ef_construction: int = 200) -> Any:
    """A faiss HNSW index (inner product) over ``vectors`` ``[N, D]`` float32 unit vectors."""
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def search(index: Any, queries: np.ndarray, k: int, ef_search: int = 128) -> Neighbours:
    """The ``k`` approximate nearest neighbours of each query (``ef_search``: more = higher recall, slower)."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(ef_search, k)
    scores, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
    return Neighbours(ids.astype(np.int64), scores.astype(np.float32))


def recall_at_k(found: Neighbours, truth: Neighbours) -> float:
    """Mean share of each query's true top-k that the approximate search returned."""
    k = truth.ids.shape[1]
    hits = [len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found.ids, truth.ids)]
    return float(np.mean(hits) / k) if hits else float("nan")


def save_index(index: Any, path: str | Path) -> None:
    import faiss

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))


def load_index(path: str | Path) -> Any:
    import faiss

    return faiss.read_index(str(path))
