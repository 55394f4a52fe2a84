"""Integrated Gradients attributions of a servable torch model, one batch at a time. Pure torch + Captum.

Why Captum's Integrated Gradients (IG): it works on any differentiable torch model without retraining or a
surrogate, its attributions add up to the logit difference between the input and a baseline (completeness), and
its cost is fixed and known (``steps`` forward/backward passes per row). SHAP's KernelExplainer would need
hundreds of model calls per row with a background set; DeepSHAP does not cover transformers' attention.

- Images: IG on the normalised input, baseline a black image (pixel value 0 normalised), so an all-black
  background gets no credit; the map is the absolute attribution summed over channels, ``[H, W]``.
- Text: layer IG on the word-embedding layer (token ids are not differentiable), baseline the padding token in
  every attended position with the same attention mask; a token's score is its attribution summed over the
  embedding dimensions (signed: negative tokens pushed the logit down).

Attributions are for the predicted class of each row. ``convergence`` (per row, |sum of attributions - (logit -
baseline logit)| relative to the logit gap) says how well ``steps`` approximated the integral.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Attributions:
    """One batch: the class explained, its probability, per-row scores, and the IG approximation error."""

    target: np.ndarray          # [B] class index explained (the predicted one)
    probability: np.ndarray     # [B] its softmax probability
    scores: np.ndarray          # images [B, H, W] (>= 0); text [B, L] (signed, 0 on padding)
    convergence: np.ndarray     # [B] relative completeness error


def embedding_layer(model: nn.Module) -> nn.Embedding:
    """The word-embedding layer of a text model (``word_embeddings`` when it has one, else its first Embedding).

    Raises
    ------
    ValueError
        When the model has no ``nn.Embedding``.
    """
    embeddings = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not embeddings:
        raise ValueError(f"{type(model).__name__} has no nn.Embedding to attribute tokens through")
    named = [m for name, m in embeddings if name.endswith("word_embeddings")]
    return named[0] if named else embeddings[0][1]


def explain_images(model: nn.Module, x: np.ndarray, mean: Sequence[float], std: Sequence[float], *, steps: int = 32,
                   internal_batch_size: int | None = None) -> Attributions:
    """IG maps of normalised images ``x`` ``[B, C, H, W]`` for their predicted classes (baseline: black)."""
    from captum.attr import IntegratedGradients

    model = model.eval()
    inputs = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    black = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).view(1, -1, 1, 1).expand_as(inputs)
    target, probability, gap = _predicted(model, inputs, black.contiguous())
    ig = IntegratedGradients(model)
    attr, delta = ig.attribute(inputs, baselines=black.contiguous(), target=torch.from_numpy(target), n_steps=steps,
                               internal_batch_size=internal_batch_size or len(inputs), return_convergence_delta=True)
    scores = attr.detach().abs().sum(dim=1).numpy()
    return Attributions(target, probability, scores, _relative(delta, gap))


def explain_tokens(model: nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray, *, pad_id: int = 0,
                   steps: int = 32, internal_batch_size: int | None = None) -> Attributions:
    """Layer IG token scores of a servable text model (``stacked [B, 2, L] -> logits``) for its predicted classes."""
    from captum.attr import LayerIntegratedGradients

    model = model.eval()
    mask = torch.from_numpy(np.ascontiguousarray(attention_mask, np.int64))
    ids = torch.from_numpy(np.ascontiguousarray(input_ids, np.int64))
    stacked = torch.stack([ids, mask], dim=1)
    baseline = torch.stack([torch.where(mask > 0, torch.full_like(ids, pad_id), ids), mask], dim=1)
    target, probability, gap = _predicted(model, stacked, baseline)
    lig = LayerIntegratedGradients(model, embedding_layer(model))
    attr, delta = lig.attribute(stacked, baselines=baseline, target=torch.from_numpy(target), n_steps=steps,
                                internal_batch_size=internal_batch_size or len(stacked), return_convergence_delta=True)
    scores = attr.detach().sum(dim=-1).numpy() * attention_mask
    return Attributions(target, probability, scores.astype(np.float32), _relative(delta, gap))


def _predicted(model: Any, inputs: torch.Tensor, baseline: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class, its probability, logit gap to the baseline) per row."""
    with torch.no_grad():
        logits = model(inputs).float()
        base = model(baseline).float()
    target = logits.argmax(dim=1)
    rows = torch.arange(len(target))
    probability = torch.softmax(logits, dim=1)[rows, target]
    gap = (logits[rows, target] - base[rows, target]).abs()
    return target.numpy(), probability.numpy(), gap.numpy()


def _relative(delta: torch.Tensor, gap: np.ndarray) -> np.ndarray:
    return (delta.detach().abs().numpy() / np.maximum(gap, 1e-6)).astype(np.float32)


def region_share(scores: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
    """Per image ``[B, H, W]``: the share of its attribution mass inside ``region`` (rows, columns)."""
    total = scores.reshape(len(scores), -1).sum(axis=1)
    inside = scores[:, region[0], region[1]].reshape(len(scores), -1).sum(axis=1)
    return inside / np.maximum(total, 1e-12)
