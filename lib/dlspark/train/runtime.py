"""Device, precision, memory format and seeding for one training process, resolved from ``TrainConfig``."""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass

import numpy as np
import torch

from dlspark.config import TrainConfig

logger = logging.getLogger(__name__)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where and how this process computes: ``precision`` is fp32 | bf16 | fp16 after resolving ``auto``."""

    device: torch.device
    precision: str
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to bf16/fp16 (a no-op context for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (disabled, i.e. pass-through, otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def resolve_runtime(cfg: TrainConfig, local_rank: int, image_model: bool) -> Runtime:
    """Pick the device (``cuda:<local_rank>`` when asked for or available), precision and memory format."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; set train.device=auto or cpu")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        logger.warning("train.precision fp16 needs a GPU; using fp32 on CPU (bf16 works on CPU if wanted)")
        precision = "fp32"
    channels_last = image_model and (cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda))
    return Runtime(device, precision, channels_last)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Per-(epoch, rank) seed for dropout and other in-model randomness."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63
