"""A compact CNN for small images (Fashion-MNIST, CIFAR-sized). Pure torch, no I/O.

Blocks of two 3x3 conv + BatchNorm + ReLU, then 2x2 max-pool and dropout; global average pooling
and a small MLP head. Three blocks at widths (32, 64, 128) reach ~0.92 test accuracy on Fashion-MNIST
in a few CPU epochs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    """Shape of the network; ``asdict`` of it is the JSON model spec (plus ``name``)."""

    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    hidden: int = 128
    dropout: float = 0.25

    def spec(self) -> dict:
        return {"name": "cnn", **asdict(self), "widths": list(self.widths)}


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ConvBlock(nn.Module):
    """conv-bn-relu x2, then halve H and W."""

    def __init__(self, c_in: int, c_out: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out), *_conv_bn(c_out, c_out), nn.MaxPool2d(2), nn.Dropout2d(dropout / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, c_in, H, W) -> (B, c_out, H/2, W/2)


class CompactCNN(nn.Module):
    """Image classifier: (B, C, H, W) float -> (B, num_classes) logits."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        chans = (config.in_channels, *config.widths)
        self.features = nn.Sequential(*[ConvBlock(a, b, config.dropout) for a, b in zip(chans[:-1], chans[1:])])
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),                                  # (B, widths[-1])
            nn.Linear(config.widths[-1], config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),  # (B, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def freeze_encoder(self) -> None:
        """Train the head only (transfer learning: ``train.transfer.freeze: all``)."""
        self.features.requires_grad_(False)

    def unfreeze_top_layers(self, n: int) -> None:
        """The top ``n`` conv blocks train, with the head; the blocks below stay frozen."""
        blocks = list(self.features)
        if not 0 <= n <= len(blocks):
            raise ValueError(f"unfreeze_top_layers: n must be in [0, {len(blocks)}] for this CNN, got {n}")
        self.freeze_encoder()
        for block in blocks[len(blocks) - n:]:
            block.requires_grad_(True)
