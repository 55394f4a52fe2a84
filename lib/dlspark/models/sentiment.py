"""Sentiment classifier: the packaged pretrained MiniLM encoder, mean pooling, a linear head.

Transfer learning in two phases: ``freeze_encoder()`` trains the head alone (the encoder then runs
under ``no_grad``, which makes the frozen phase cheap), ``unfreeze_top_layers(n)`` fine-tunes the top
``n`` transformer layers with the head. The encoder is read from local files only (HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dlspark.text.tokenize import tokenizer_dir


@dataclass(frozen=True)
class SentimentSpec:
    """``encoder`` is a packaged alias (``minilm``) or a local model directory; ``spec()`` is the JSON spec."""

    encoder: str = "minilm"
    num_classes: int = 2
    dropout: float = 0.1

    def spec(self) -> dict:
        return {"name": "minilm", **asdict(self)}


def load_encoder(name: str) -> nn.Module:
    """The pretrained transformer encoder for ``name``, never touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(str(tokenizer_dir(name)), local_files_only=True)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors where ``mask`` is 1: (B, L, D), (B, L) -> (B, D)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class SentimentClassifier(nn.Module):
    """(input_ids (B, L), attention_mask (B, L)) -> (B, num_classes) logits."""

    def __init__(self, spec: SentimentSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = load_encoder(spec.encoder)
        width = self.encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(width, spec.num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        frozen = not any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        return self.head(mean_pool(hidden, attention_mask))

    def freeze_encoder(self) -> None:
        """Train the head only."""
        self.encoder.requires_grad_(False)

    def unfreeze_top_layers(self, n: int) -> None:
        """Make the top ``n`` transformer layers (and the pooler, if any) trainable; the rest stays frozen."""
        layers = self.encoder.encoder.layer
        if not 0 <= n <= len(layers):
            raise ValueError(f"unfreeze_top_layers: n must be in [0, {len(layers)}] for this encoder, got {n}")
        self.freeze_encoder()
        for layer in list(layers)[len(layers) - n:]:
            layer.requires_grad_(True)
