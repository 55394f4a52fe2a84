"""Near-duplicates among new rows by their embeddings: the rule ingest's optional near-dedup stage applies.

Greedy, in the order given (ingest passes record_id order, the order exact dedup keeps): a new row is a
near-duplicate when a row already in the model version's index, or an earlier new row that was kept, is at cosine
similarity >= ``threshold``; it names the most similar such row. Among the new rows the candidates are each row's
``k`` nearest (a faiss HNSW over the new rows), so a pair outside each other's ``k`` nearest is not compared: with
``k`` 10 and a threshold near 1 that misses only rows with 10+ closer near-copies. Pure code: numpy, faiss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dlspark.embeddings.ann import build_hnsw, exact_topk, search
from dlspark.embeddings.index_store import VectorIndex

EXACT_BELOW = 4096          # fewer new rows than this: exact top-k among them (no graph to build)


@dataclass(frozen=True)
class NearDuplicate:
    position: int           # of the new row, in the order given
    duplicate_of: str       # key of the row it repeats (kept: in the index, or an earlier new row)
    similarity: float
    in_index: bool          # the row it repeats was indexed before (else it is new in this batch too)


def near_duplicates(keys: Sequence[str], vectors: np.ndarray, threshold: float, existing: VectorIndex | None = None,
                    k: int = 10, ef_search: int = 128) -> list[NearDuplicate]:
    """The near-duplicates among new rows ``keys`` (unit ``vectors``, same order), by the rule above."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the near-duplicate threshold is a cosine similarity in (0, 1], got {threshold}")
    n = len(keys)
    found: dict[int, NearDuplicate] = {}
    if existing is not None and len(existing) and n:
        for pos, hits in enumerate(existing.nearest(vectors, 1, ef_search)):
            if hits and hits[0].similarity >= threshold:
                found[pos] = NearDuplicate(pos, hits[0].key, hits[0].similarity, True)
    if n < 2:
        return list(found.values())
    vectors = np.ascontiguousarray(vectors, np.float32)
    want = min(k + 1, n)
    near = exact_topk(vectors, vectors, want) if n < EXACT_BELOW else search(build_hnsw(vectors), vectors, want, ef_search)
    for pos in range(n):
        if pos in found:
            continue
        earlier = [(float(s), int(j)) for j, s in zip(near.ids[pos], near.scores[pos])
                   if 0 <= j < pos and j not in found and s >= threshold]
        if earlier:
            similarity, j = max(earlier)
            found[pos] = NearDuplicate(pos, keys[j], similarity, False)
    return [found[p] for p in sorted(found)]
