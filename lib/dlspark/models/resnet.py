"""ResNet-family image classifier on transformers' ``ResNetModel`` (no torchvision, no downloads).

Randomly initialised from a ``ResNetConfig``; ``variant`` picks the depth/width preset:
``tiny`` (basic blocks, widths 32..256, one block per stage: fast on CPU for 28x28 images),
``resnet18`` and ``resnet50`` (the standard ImageNet shapes, for GPU benchmarks).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

VARIANTS = {
    "tiny": {"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "layer_type": "basic"},
    "resnet18": {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2], "layer_type": "basic"},
    "resnet50": {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3], "layer_type": "bottleneck"},
}


@dataclass(frozen=True)
class ResNetSpec:
    """Which preset, how many input channels and classes; ``spec()`` is the JSON model spec."""

    variant: str = "tiny"
    in_channels: int = 3
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"resnet variant {self.variant!r} is unknown; use one of {sorted(VARIANTS)}")

    def spec(self) -> dict:
        return {"name": "resnet", **asdict(self)}


class ResNetClassifier(nn.Module):
    """(B, C, H, W) float -> (B, num_classes) logits: ResNet trunk, global pool, linear head."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        from transformers import ResNetConfig, ResNetModel

        self.spec = spec
        config = ResNetConfig(num_channels=spec.in_channels, **VARIANTS[spec.variant])
        self.trunk = ResNetModel(config)
        self.head = nn.Linear(config.hidden_sizes[-1], spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.trunk(pixel_values=x).pooler_output  # (B, hidden_sizes[-1], 1, 1)
        return self.head(pooled.flatten(1))
