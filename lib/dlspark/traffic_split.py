"""The traffic split of a roll-out, shared by serving and batch scoring (no web or Spark imports).

A key (a request's ``x-rollout-key``, a row's id in batch scoring) has a sticky point in [0, 1): the first 8 bytes
of its SHA-256 as a fraction. It goes to the challenger when the point is below the challenger's share, so a key
keeps its version while the share does not shrink, and raising the share only moves champion keys over.
"""
from __future__ import annotations

import hashlib

from dlspark.config.schema import RolloutConfig


def key_point(key: str) -> float:
    """The sticky position of a key in [0, 1): the first 8 bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def start_share(cfg: RolloutConfig) -> float:
    """The challenger's share of answers when a rollout starts: ``split`` (ab), the first step (canary), 0 (shadow)."""
    return {"ab": cfg.split, "canary": cfg.steps[0] if cfg.steps else 0.0}.get(cfg.mode, 0.0)
