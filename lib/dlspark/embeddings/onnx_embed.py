"""The embedding graph on onnxruntime: :class:`~dlspark.embeddings.vectors.HeadInput` of a torch classifier,
exported to ONNX (the logits after the head are not in the graph) and checked against torch before use.

Serving's ``POST /similar`` embeds one request's few instances at a time; there torch eager's per-operator overhead
is most of the time (MiniLM on one 15-token tweet: ~15 ms eager), and onnxruntime's fused graph is faster. Vectors
must stay the ones the embed job stored with torch, so :func:`onnx_embedder` compares both on a few rows and
refuses (the caller keeps torch) unless every cosine is >= ``min_cosine``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class EmbedderParityError(RuntimeError):
    """The exported graph's vectors differ from torch's beyond the tolerance."""


@dataclass
class OnnxEmbedder:
    """``x -> [B, D]`` unit vectors on one onnxruntime session (``x`` as :func:`embed_inputs` builds it)."""

    session: Any
    min_cosine: float           # what the parity check measured (the lowest cosine against torch)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": x})[0].astype(np.float32)


def onnx_embedder(model: Any, num_classes: int, example: np.ndarray, folder: str | Path, *, threads: int | None = None,
                  min_cosine: float = 0.9999) -> OnnxEmbedder:
    """Export ``model``'s embedding graph to ``folder/embedding.onnx``, load it, and check it on ``example`` rows
    (the session holds the graph: ``folder`` may go afterwards).

    Raises
    ------
    EmbedderParityError
        When a row's ONNX vector is further than ``min_cosine`` from torch's.
    """
    import onnxruntime as ort
    import torch

    from dlspark.embeddings.vectors import HeadInput
    from dlspark.export.onnx import export_onnx
    from dlspark.export.registered import trace_example

    graph = HeadInput(model, num_classes).eval()
    rows = trace_example(example)
    path = export_onnx(graph, rows, Path(folder) / "embedding.onnx", output_name="embedding")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    embedder = OnnxEmbedder(ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"]),
                            1.0)
    with torch.no_grad():
        expected = graph(torch.from_numpy(rows)).numpy()
    cosine = float(np.min(np.sum(expected * embedder(rows), axis=1)))
    if cosine < min_cosine:
        raise EmbedderParityError(f"the ONNX embedding graph of {type(model).__name__} gives vectors at cosine {cosine:.6f} "
                                  f"from torch's (at least {min_cosine} needed)")
    embedder.min_cosine = cosine
    return embedder
