"""Embeddings from a trained classifier: the input of its classification head, L2-normalised. Pure torch.

One rule for every model we train (CNN, ResNet, ViT, MiniLM, textcnn): the head is the last ``nn.Linear`` whose
outputs are the classes, and what it reads is the model's own representation of the row (the CNN's penultimate
layer, MiniLM's masked mean pooling after its dropout, which is the identity in eval mode). A forward hook captures
it, so no model needs a second forward method.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


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
    captured: list[torch.Tensor] = []
    hook = classifier_head(model, num_classes).register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        model.eval()(inputs)
    finally:
        hook.remove()
    vectors = captured[-1].float().flatten(1)
    return torch.nn.functional.normalize(vectors, dim=1).numpy().astype(np.float32)
