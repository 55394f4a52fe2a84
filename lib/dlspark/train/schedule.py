"""Learning-rate policy: linear scaling by world size, linear warmup, then cosine decay to zero.

Per optimizer step: factor ``(s + 1) / warmup`` for the first ``warmup`` steps, then
``0.5 * (1 + cos(pi * progress))`` over the remaining steps (progress clamped to 1 if an epoch runs longer
than planned). Cosine is chosen over step decay: no milestones to tune when ``epochs`` changes.
"""
from __future__ import annotations

import math

import torch


def scaled_lr(base_lr: float, world_size: int, scaling: str) -> float:
    """``base_lr * world_size`` for ``linear`` scaling (the global batch grows with the world), else ``base_lr``."""
    return base_lr * world_size if scaling == "linear" else base_lr


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`; its ``state_dict`` goes in the checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps))
