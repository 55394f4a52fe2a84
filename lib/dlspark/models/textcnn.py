"""A small text classifier for distillation students: word embeddings, 1-D convolutions, masked max pooling.

Kim (2014)'s CNN over the same token ids as the MiniLM teacher (same tokenizer, same ``[B, 2, L]`` servable
input), so the student scores, exports and serves exactly as the teacher does. Its embeddings start from
MiniLM's input word embeddings (``embeddings: minilm``): about 0.6 M multiply-adds per token against MiniLM's
10.6 M. Pure torch, no I/O except reading the packaged encoder's embedding matrix once at build time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class TextCNNSpec:
    """``embeddings``: ``minilm`` (copy the packaged encoder's word embeddings) or null (random, ``vocab_size``)."""

    num_classes: int = 2
    embeddings: str | None = "minilm"
    vocab_size: int = 30522
    embed_dim: int = 384
    kernel_sizes: tuple[int, ...] = (3, 4, 5)
    channels: int = 128
    dropout: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))
        if not self.kernel_sizes or min(self.kernel_sizes) < 1 or self.channels < 1:
            raise ValueError(f"textcnn needs kernel_sizes >= 1 and channels >= 1, got {self.kernel_sizes}, {self.channels}")

    def spec(self) -> dict:
        return {"name": "textcnn", **asdict(self), "kernel_sizes": list(self.kernel_sizes)}


class TextCNN(nn.Module):
    """(input_ids (B, L), attention_mask (B, L)) -> (B, num_classes) logits."""

    def __init__(self, spec: TextCNNSpec) -> None:
        super().__init__()
        self.spec = spec
        weights = pretrained_embeddings(spec.embeddings) if spec.embeddings else None
        vocab, dim = weights.shape if weights is not None else (spec.vocab_size, spec.embed_dim)
        self.embed = nn.Embedding(vocab, dim)
        if weights is not None:
            self.embed.weight.data.copy_(weights)
            self.spec = spec = TextCNNSpec(**{**asdict(spec), "vocab_size": vocab, "embed_dim": dim})
        self.convs = nn.ModuleList([nn.Conv1d(dim, spec.channels, k, padding=k // 2) for k in spec.kernel_sizes])
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(spec.channels * len(spec.kernel_sizes), spec.num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = (self.embed(input_ids) * attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)).transpose(1, 2)  # (B, D, L)
        # padding embeds as zeros, as the convolutions' own zero padding: the output does not depend on it
        pooled = [masked_max(torch.relu(conv(x))[..., :input_ids.shape[1]], attention_mask) for conv in self.convs]
        return self.head(torch.cat(pooled, dim=1))                      # (B, channels * kernels) -> (B, classes)


def masked_max(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the attended positions: (B, C, L), (B, L) -> (B, C); a row with no attended token gives zeros."""
    keep = mask.unsqueeze(1).bool()
    filled = features.masked_fill(~keep, float("-inf")).amax(dim=2)
    return torch.where(torch.isfinite(filled), filled, torch.zeros_like(filled))


def pretrained_embeddings(name: str) -> torch.Tensor:
    """The input word-embedding matrix ``(vocab, dim)`` of a packaged encoder (``minilm``), read offline."""
    from dlspark.models.sentiment import load_encoder

    encoder: Any = load_encoder(name)                 # a transformers PreTrainedModel
    return encoder.get_input_embeddings().weight.detach().clone()
