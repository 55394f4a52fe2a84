"""``GET/POST /similar``: the indexed rows nearest to an indexed row (by its key) or to posted images and texts.

A :class:`SimilarModel` is one model version's saved index (:mod:`dlspark.embeddings.index_store`, written by
``jobs/embed.py``) with the eager torch module of that version, whose head input embeds a posted instance exactly as
the embed job embedded the table (same decoding and tokenization as ``POST /predict``). It lives in a
:class:`~dlspark.serving.service.ModelService`, so it is swapped atomically when the alias moves to a version with
an index or the embed job rebuilds the index; while the new version has none, the last loaded one keeps answering
(each answer names its version).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dlspark.embeddings.index_store import MANIFEST, IndexMissing, Neighbour, VectorIndex
from dlspark.inference.model import ModelRef
from dlspark.serving.service import ModelService, ServedModel, batch_inputs, instance_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexedVersion:
    """A model version and the build of its index: a rebuilt index is a new ``uri``, so the service reloads."""

    ref: ModelRef
    folder: Path
    built_at: str

    @property
    def uri(self) -> str:
        return f"{self.ref.uri}#index={self.built_at}"

    @property
    def requested(self) -> str:
        return self.ref.requested


def indexed_version(ref: ModelRef, folder: Path) -> IndexedVersion:
    """``ref`` with its index's build time; raises :class:`IndexMissing` when ``folder`` holds no index."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise IndexMissing(f"{ref.label} has no embeddings index at {folder}: run jobs/embed.py for it")
    return IndexedVersion(ref, folder, str(json.loads(manifest.read_text(encoding="utf-8")).get("built_at", "")))


@dataclass
class SimilarModel:
    """One version's index and the module that embeds posted instances for it."""

    served: ServedModel              # decoding / tokenization of posted instances, as POST /predict does
    module: Any                      # the eager torch module whose head input is the embedding
    index: VectorIndex
    embedder: Any = None             # what embeds: an OnnxEmbedder of ``module``, or None = ``module`` itself
    lock: threading.Lock = field(default_factory=threading.Lock)   # the embedding hook is per call: one at a time

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def version(self) -> str | None:
        return self.served.version

    @property
    def kind(self) -> str:
        return self.served.kind

    @property
    def runtime(self) -> str:
        what = "onnxruntime" if self.embedder is not None else "torch"
        return f"index of {len(self.index)} vectors built {self.index.built_at}, embedded on {what}"

    def by_key(self, key: str, k: int, ef_search: int) -> list[Neighbour]:
        """The ``k`` rows nearest to indexed row ``key``, itself excluded; KeyError for an unknown key."""
        return self.index.nearest(self.index.vector(key)[None, :], k, ef_search, exclude=[key])[0]

    def embed_values(self, values: Sequence[np.ndarray | str]) -> list[tuple[np.ndarray, SimilarModel] | Exception]:
        """One forward pass over prepared values (decoded pixels or texts, from any number of requests): per value
        its unit vector with this model (whose index it must be searched in), or the
        :class:`~dlspark.serving.service.InstanceError`."""
        from dlspark.embeddings.vectors import embed_inputs

        inputs = batch_inputs(self.served, values)
        spec = self.served.spec
        with self.lock:
            vectors = embed_inputs(self.embedder or self.module, inputs, self.kind, spec.preprocessing, len(spec.labels),
                                   spec.batch_size)
        found = dict(zip(inputs.valid.tolist(), vectors))
        errors = inputs.errors or [None] * len(values)
        out: list[tuple[np.ndarray, SimilarModel] | Exception] = []
        for i, error in enumerate(errors):
            if i in found:
                out.append((found[i], self))
            else:
                out.append(instance_error(i, error or "internal: no vector"))
        return out

    def nearest(self, vector: np.ndarray, k: int, ef_search: int) -> list[Neighbour]:
        return self.index.nearest(vector[None, :], k, ef_search)[0]


def embed_on(service: ModelService, values: list) -> list:
    """The micro-batcher's forward pass: the values embedded by the model ``service`` holds now."""
    model: SimilarModel = service.model  # type: ignore[assignment]  # the /similar service holds SimilarModels
    return model.embed_values(values)


def load_similar_model(served: ServedModel, module: Any, folder: Path, runtime: str = "onnx") -> SimilarModel:
    """The version's index from ``folder``, checked against the module's embedding width; with ``runtime`` onnx,
    the embedding graph on onnxruntime when it matches torch (else torch, with a warning)."""
    index = _checked_index(folder, served, module)
    embedder = _onnx_embedder(served, module) if runtime == "onnx" else None
    return SimilarModel(served, module, index, embedder)


def with_rebuilt_index(model: SimilarModel, folder: Path) -> SimilarModel:
    """``model`` (same version) with the index rebuilt at ``folder``: the loaded module, preprocessing and embedding
    graph are kept, so a rebuild does not download, warm up or export the model again."""
    return SimilarModel(model.served, model.module, _checked_index(folder, model.served, model.module), model.embedder)


def _checked_index(folder: Path, served: ServedModel, module: Any) -> VectorIndex:
    index = VectorIndex.load(folder)
    head_width = _embedding_width(module, len(served.spec.labels))
    if index.manifest.get("dim") not in (None, head_width):
        raise IndexMissing(f"the index at {folder} holds {index.manifest['dim']}-dimensional vectors but "
                           f"{served.name} version {served.version} embeds {head_width}: rebuild it with jobs/embed.py")
    return index


def _onnx_embedder(served: ServedModel, module: Any) -> Any:
    """The checked ONNX embedding graph of ``module``, or None (torch embeds) when it cannot be had."""
    import tempfile

    from dlspark.embeddings.onnx_embed import onnx_embedder
    from dlspark.embeddings.vectors import model_input_array

    if served.kind == "image":
        assert served.image is not None
        values: list[Any] = list(np.random.default_rng(0).integers(0, 256, size=(4, *served.image.shape), dtype=np.uint8))
    else:
        values = ["warm up", "the battery lasts all day and the screen is great", "worst service ever, never again"]
    inputs = batch_inputs(served, values)
    example = model_input_array(inputs, served.kind, served.spec.preprocessing)
    try:
        with tempfile.TemporaryDirectory(prefix="dlspark-embedding-") as folder:   # the session keeps the graph
            embedder = onnx_embedder(module, len(served.spec.labels), example, folder, threads=served.spec.threads)
    except Exception as exc:  # noqa: BLE001 - torch still embeds correctly, only slower
        log.warning("/similar: %s version %s embeds on torch: the ONNX embedding graph is not usable (%s)", served.name,
                    served.version, exc)
        return None
    log.info("/similar: %s version %s embeds on onnxruntime (lowest cosine to torch %.6f)", served.name, served.version,
             embedder.min_cosine)
    return embedder


def _embedding_width(module: Any, num_classes: int) -> int:
    from dlspark.embeddings.vectors import classifier_head

    return int(classifier_head(module, num_classes).in_features)


async def keep_index_fresh(service: ModelService, reload_seconds: float, retry_seconds: float = 5.0) -> None:
    """Load the index (retrying while there is none), then look for a moved alias or a rebuilt index every
    ``reload_seconds`` (0 = never). A missing index is one warning per distinct message, not a traceback a poll."""
    said = None
    while True:
        try:
            await asyncio.to_thread(service.refresh)
            said = None
        except IndexMissing as exc:
            if str(exc) != said:
                log.warning("/similar: %s%s", exc, "; still answering from the loaded version" if service.ready else "")
                said = str(exc)
        except Exception:  # noqa: BLE001 - keep serving what is loaded; the next poll retries
            log.exception("/similar: loading the index failed%s", "; still answering from the loaded version"
                          if service.ready else "")
        if service.ready and reload_seconds <= 0:
            return
        await asyncio.sleep(reload_seconds if service.ready else retry_seconds)
