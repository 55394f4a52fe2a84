"""The saved nearest-neighbour index of one model version's embeddings, and the searches every caller makes of it
(the embed job's ``--similar-to`` and ``--duplicates``, ``GET/POST /similar`` in serving, ingest's near-dedup).

Folder: ``<embed.output>/_index/<model name>-v<version>/`` with ``index.faiss`` (HNSW over unit vectors; or
``index-00000.faiss``... when it was built per partition, one shard each),
``keys.json`` (the row key of each vector in index order, and its label) and ``manifest.json`` (model, vectors,
dimension, HNSW settings, build time). Pure code: faiss, json, numpy.
"""
from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from dlspark.embeddings.ann import Neighbours, build_hnsw, load_index, save_index, search
from dlspark.filesystem import write_text
from dlspark.paths import resolve_path

if TYPE_CHECKING:
    from dlspark.config import AppConfig

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"          # the one shard's file; several shards: index-00000.faiss, index-00001.faiss, ...


class IndexMissing(LookupError):
    """The model version has no index (yet): the message says which folder and how to build it."""


@dataclass(frozen=True)
class Neighbour:
    key: str
    label: str | None
    similarity: float


def index_location(cfg: AppConfig, name: str | None, version: str | None) -> tuple[str, Path]:
    """(the embeddings table of model ``name``, the local folder of version ``version``'s index beside it).

    Raises
    ------
    ConfigError
        When the table is not on a local path (faiss writes and reads local files) and ``embed.index`` is on.
    """
    from dlspark.config import ConfigError

    output = resolve_path(cfg.paths.data_dir, cfg.embeddings_output(name))
    folder = f"{output.rstrip('/')}/_index/{name}-v{version}".removeprefix("file://")
    if "://" in folder and cfg.embed.index:
        raise ConfigError(f"the index is written with faiss to a local path; {folder} is not one (set embed.index: false)")
    return output, Path(folder)


@dataclass
class VectorIndex:
    """A loaded index: its faiss HNSW shards, the row key and label of each vector, and the manifest.

    Shard ``s`` holds the vectors at positions ``offsets[s]:offsets[s + 1]`` of ``keys`` (keys sorted, each shard a
    key range): one shard when the driver builds it, one per partition when ``jobs/embed.py`` builds it on the
    executors. A search asks every shard for its ``k`` nearest and keeps the best ``k`` of them all.
    """

    shards: list[Any]
    key_column: str
    keys: list[str]
    labels: list[str | None]
    manifest: dict[str, Any]
    positions: dict[str, int] = field(init=False, repr=False)
    offsets: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.positions = {k: i for i, k in enumerate(self.keys)}
        self.offsets = [0]
        for shard in self.shards:
            self.offsets.append(self.offsets[-1] + int(shard.ntotal))
        if self.offsets[-1] != len(self.keys):
            raise ValueError(f"the index shards hold {self.offsets[-1]} vectors but {len(self.keys)} keys were given")

    @property
    def built_at(self) -> str:
        return str(self.manifest.get("built_at", ""))

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, folder: str | Path) -> "VectorIndex":
        """Raises :class:`IndexMissing` when ``folder`` holds no complete index."""
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise IndexMissing(f"no index at {folder}: run jobs/embed.py for this model version first")
        stored = json.loads((folder / "keys.json").read_text(encoding="utf-8"))
        keys = [str(k) for k in stored["keys"]]
        labels = stored.get("labels") or [None] * len(keys)
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        shards = [load_index(folder / name) for name in manifest.get("files", [INDEX_FILE])]
        return cls(shards, stored["key"], keys, labels, manifest)

    @classmethod
    def build(cls, key_column: str, keys: Sequence[str], labels: Sequence[str | None], vectors: np.ndarray,
              manifest: dict[str, Any], hnsw_m: int = 32, ef_construction: int = 200) -> "VectorIndex":
        """One shard over ``vectors`` (built here)."""
        index = build_hnsw(np.ascontiguousarray(vectors, np.float32), m=hnsw_m, ef_construction=ef_construction)
        return cls.from_shards(key_column, keys, labels, [index], manifest, hnsw_m, ef_construction)

    @classmethod
    def from_shards(cls, key_column: str, keys: Sequence[str], labels: Sequence[str | None], shards: Sequence[Any],
                    manifest: dict[str, Any], hnsw_m: int, ef_construction: int) -> "VectorIndex":
        """Shards built elsewhere (``jobs/embed.py``: one per partition on the executors), in key order."""
        dim = int(shards[0].d) if shards else 0
        manifest = {**manifest, "vectors": len(keys), "dim": dim, "metric": "cosine", "hnsw_m": hnsw_m,
                    "ef_construction": ef_construction, "shards": len(shards),
                    "files": [INDEX_FILE] if len(shards) == 1 else [f"index-{s:05d}.faiss" for s in range(len(shards))],
                    "built_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
        return cls(list(shards), key_column, list(keys), list(labels), manifest)

    def save(self, folder: str | Path) -> None:
        """Shards and keys first, the manifest last: a folder with a manifest is complete."""
        for shard, name in zip(self.shards, self.manifest["files"]):
            save_index(shard, f"{folder}/{name}")
        write_text(f"{folder}/keys.json", json.dumps({"key": self.key_column, "keys": self.keys, "labels": self.labels}))
        write_text(f"{folder}/{MANIFEST}", json.dumps(self.manifest, indent=1))

    def vector(self, key: str) -> np.ndarray:
        """The stored unit vector of row ``key``; KeyError when the index has no such row."""
        position = self.positions[key]
        s = bisect.bisect_right(self.offsets, position) - 1
        return self.shards[s].reconstruct(position - self.offsets[s]).astype(np.float32)

    def vectors(self) -> np.ndarray:
        return np.concatenate([shard.reconstruct_n(0, shard.ntotal) for shard in self.shards]).astype(np.float32)

    def search(self, queries: np.ndarray, k: int, ef_search: int = 128) -> Neighbours:
        """The ``k`` nearest positions (into ``keys``) of each query over all shards, best first."""
        queries = np.asarray(queries, np.float32)
        found = [search(shard, queries, min(k, int(shard.ntotal)), ef_search=ef_search) for shard in self.shards]
        if len(found) == 1:
            return found[0]
        ids = np.concatenate([np.where(f.ids >= 0, f.ids + offset, -1) for f, offset in zip(found, self.offsets)], axis=1)
        scores = np.concatenate([np.where(f.ids >= 0, f.scores, -np.inf) for f in found], axis=1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return Neighbours(np.take_along_axis(ids, best, axis=1), np.take_along_axis(scores, best, axis=1).astype(np.float32))

    def nearest(self, queries: np.ndarray, k: int, ef_search: int = 128,
                exclude: Sequence[str | None] | None = None) -> list[list[Neighbour]]:
        """The ``k`` nearest indexed rows of each query vector, best first; ``exclude[i]`` (a key) is left out of
        query ``i``'s answer (the row itself, when searching by id)."""
        if not len(self.keys) or not len(queries):
            return [[] for _ in range(len(queries))]
        found = self.search(queries, min(k + (exclude is not None), len(self.keys)), ef_search=ef_search)
        out = []
        for q, (ids, scores) in enumerate(zip(found.ids, found.scores)):
            skip = exclude[q] if exclude is not None else None
            hits = [Neighbour(self.keys[int(i)], self.labels[int(i)], float(s)) for i, s in zip(ids, scores)
                    if i >= 0 and self.keys[int(i)] != skip]
            out.append(hits[:k])
        return out

    def duplicate_pairs(self, threshold: float, k: int = 10, ef_search: int = 128) -> dict[tuple[str, str], float]:
        """Every pair among each row's ``k`` nearest with cosine >= ``threshold``, once (``key_a < key_b``)."""
        pairs: dict[tuple[str, str], float] = {}
        for key, hits in zip(self.keys, self.nearest(self.vectors(), k, ef_search, exclude=self.keys)):
            for hit in hits:
                if hit.similarity >= threshold:
                    a, b = sorted((key, hit.key))
                    pairs[(a, b)] = max(hit.similarity, pairs.get((a, b), -1.0))
        return pairs
