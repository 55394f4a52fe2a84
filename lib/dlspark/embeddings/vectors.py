"""Embeddings from a trained classifier: the input of its classification head, L2-normalised. Pure torch.

One rule for every model we train (CNN, ResNet, ViT, MiniLM, textcnn): the head is the last ``nn.Linear`` whose
outputs are the classes, and what it reads is the model's own representation of the row (the CNN's penultimate
layer, MiniLM's masked mean pooling after its dropout, which is the identity in eval mode). A forward hook captures
it, so no model needs a second forward method.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from dlspark.inference.inputs import ModelInputs


def classifier_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """The last ``nn.Linear`` of ``model`` with ``num_classes`` outputs.

    Raises
    ------
    ValueError
        When there is none (not a classifier of that many classes).
    """
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no nn.Linear with {num_classes} outputs to take embeddings before")
    return heads[-1]


@torch.no_grad()
def embed(model: nn.Module, inputs: Any, num_classes: int) -> np.ndarray:
    """``[B, D]`` float32 unit vectors: what the head of ``model`` reads for ``inputs`` (one forward pass)."""
    return HeadInput(model.eval(), num_classes)(inputs).numpy().astype(np.float32)


def embed_inputs(model: nn.Module | Callable[[np.ndarray], np.ndarray], inputs: ModelInputs, kind: str,
                 preprocessing: Mapping[str, Any], num_classes: int, batch_size: int = 256) -> np.ndarray:
    """``[len(inputs.valid), D]`` unit vectors of validated model inputs (decoded pixels, or token ids and masks),
    in sub-batches of ``batch_size``; each text sub-batch is cut to its longest attended row. ``model``: the torch
    classifier, or an :class:`~dlspark.embeddings.onnx_embed.OnnxEmbedder` of it."""
    out = []
    for start in range(0, len(inputs.valid), batch_size):
        x = model_input_array(inputs, kind, preprocessing, start, start + batch_size)
        if isinstance(model, nn.Module):
            out.append(embed(model, torch.from_numpy(x), num_classes))
        else:                                                       # an OnnxEmbedder: numpy in, unit vectors out
            out.append(model(x))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def model_input_array(inputs: ModelInputs, kind: str, preprocessing: Mapping[str, Any], start: int = 0,
                      stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of validated inputs as the model takes them: normalised float32 ``[B, C, H, W]``, or int64
    ``[B, 2, L]`` token ids and masks cut to the longest attended row."""
    from dlspark.feed.decode import normalize_images
    from dlspark.inference.scoring import attended_width

    if kind == "image":
        pixels = inputs.arrays["pixels"][start:stop]
        return normalize_images(pixels, preprocessing["mean"], preprocessing["std"], channels_last=False)
    ids = inputs.arrays["input_ids"][start:stop]
    mask = inputs.arrays["attention_mask"][start:stop]
    width = attended_width(mask)
    return np.stack([ids[:, :width], mask[:, :width]], axis=1).astype(np.int64)


class HeadInput(nn.Module):
    """``model`` answering what its classification head reads, L2-normalised (what :func:`embed` returns), as a
    module of its own: the graph that :mod:`dlspark.embeddings.onnx_embed` exports."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model, self.head = model, classifier_head(model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
        try:
            self.model(x)
        finally:
            hook.remove()
        return torch.nn.functional.normalize(captured[-1].float().flatten(1), dim=1)
