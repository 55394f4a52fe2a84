"""Training phases, the optimizer of a torch phase, and the loop position that checkpoints carry. Pure code."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dlspark.config import TrainConfig

if TYPE_CHECKING:   # torch stays out of the import: the TensorFlow loop plans its phases here too
    import torch
    from torch import nn


@dataclass(frozen=True)
class Phase:
    """Epochs ``[start, stop)`` trained at peak ``lr``; ``unfreeze`` None = every parameter trains,
    0 = frozen encoder (head only), n = the top n encoder layers and the head."""

    name: str
    start: int
    stop: int
    lr: float
    warmup_epochs: float
    unfreeze: int | None = None


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    """One phase for image models (a transfer run trains what ``train.transfer.freeze`` says); frozen-encoder then
    fine-tuning phases for the sentiment model."""
    if cfg.model != "minilm":
        t = cfg.transfer
        unfreeze = None if not t.enabled or t.freeze == "none" else (0 if t.freeze == "all" else t.top_n)
        return [Phase("transfer" if t.enabled else "train", 0, cfg.epochs, cfg.lr, cfg.warmup_epochs, unfreeze=unfreeze)]
    phases = [Phase("frozen", 0, cfg.epochs, cfg.lr, cfg.warmup_epochs, unfreeze=0)]
    s = cfg.sentiment
    if s.finetune_epochs > 0 and s.unfreeze_top_layers > 0:
        stop = cfg.epochs + s.finetune_epochs
        phases.append(Phase("finetune", cfg.epochs, stop, s.finetune_lr, 0.0, unfreeze=s.unfreeze_top_layers))
    return phases


def apply_trainable(model: nn.Module, phase: Phase) -> None:
    """Freeze / unfreeze the model's encoder (MiniLM, CNN, ViT) as ``phase`` says; ``unfreeze`` None: all train."""
    if phase.unfreeze is None:
        return
    if phase.unfreeze == 0:
        model.freeze_encoder()
    else:
        model.unfreeze_top_layers(phase.unfreeze)


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, Nesterov) over the parameters that require grad."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def warmup_steps(phase: Phase, steps_per_epoch: int) -> int:
    return math.ceil(phase.warmup_epochs * steps_per_epoch)


def better(metric: float, best: float | None, monitor: str) -> bool:
    """Is ``metric`` an improvement on ``best`` (higher accuracy, lower loss)?"""
    if best is None or math.isnan(best):
        return not math.isnan(metric)
    return metric > best if monitor.endswith("accuracy") else metric < best


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint. ``epoch``/``step``: the epoch being trained and
    its batches already done; ``partial``: summed [loss * n, correct, n] of those batches over all ranks."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopState":
        return cls(**d)
