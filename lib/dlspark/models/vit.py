"""A small Vision Transformer for image classification on transformers' ``ViTModel`` (no downloads).

Randomly initialised from a ``ViTConfig`` sized from the spec: the image is cut into ``patch_size`` squares
(28x28 Fashion-MNIST with patch 4: 49 tokens), ``layers`` encoder blocks of width ``hidden`` and ``heads`` heads,
the [CLS] token's final state into a linear head. The defaults train on 2 CPU cores in minutes per epoch; the
``vit-b16`` preset is the standard ViT-Base/16 shape, for GPUs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

PRESETS = {"vit-b16": {"patch_size": 16, "hidden": 768, "layers": 12, "heads": 12, "mlp": 3072}}


@dataclass(frozen=True)
class ViTSpec:
    """Input and model shape; ``spec()`` is the JSON model spec (``preset`` overrides the size fields)."""

    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28
    patch_size: int = 4
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    mlp: int = 128
    dropout: float = 0.1
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"vit preset {self.preset!r} is unknown; use one of {sorted(PRESETS)} or null")
            for key, value in PRESETS[self.preset].items():
                object.__setattr__(self, key, value)
        if self.image_size % self.patch_size or self.hidden % self.heads:
            raise ValueError(f"vit: image_size {self.image_size} must be a multiple of patch_size {self.patch_size} and "
                             f"hidden {self.hidden} of heads {self.heads}")

    def spec(self) -> dict:
        return {"name": "vit", **asdict(self)}


class ViTClassifier(nn.Module):
    """(B, C, H, W) float -> (B, num_classes) logits."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        self.spec = spec
        config = ViTConfig(image_size=spec.image_size, patch_size=spec.patch_size, num_channels=spec.in_channels,
                           hidden_size=spec.hidden, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                           intermediate_size=spec.mlp, hidden_dropout_prob=spec.dropout,
                           attention_probs_dropout_prob=spec.dropout)
        self.encoder = ViTModel(config, add_pooling_layer=False)
        self.head = nn.Linear(spec.hidden, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(pixel_values=x).last_hidden_state   # (B, 1 + patches, hidden)
        return self.head(hidden[:, 0])                            # [CLS] -> (B, num_classes)

    def freeze_encoder(self) -> None:
        """Train the head only (transfer learning: ``train.transfer.freeze: all``)."""
        self.encoder.requires_grad_(False)

    def unfreeze_top_layers(self, n: int) -> None:
        """The top ``n`` encoder blocks and the final layer norm train, with the head; the rest stays frozen."""
        encoder: Any = self.encoder
        layers = list(getattr(encoder, "layers", None) or encoder.encoder.layer)   # transformers 5 | 4
        if not 0 <= n <= len(layers):
            raise ValueError(f"unfreeze_top_layers: n must be in [0, {len(layers)}] for this ViT, got {n}")
        self.freeze_encoder()
        for layer in layers[len(layers) - n:]:
            layer.requires_grad_(True)
        self.encoder.layernorm.requires_grad_(n > 0)
