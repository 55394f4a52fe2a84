"""Deterministic train/val/test assignment from a content hash. Pure code."""
from __future__ import annotations

import hashlib

from dlspark.config import SplitConfig

SPLITS = ("train", "val", "test")


def split_for_key(key: str, cfg: SplitConfig) -> str:
    """Map ``key`` (e.g. a content sha256) to a split; same key and config always give the same split.

    The salted key is hashed again so that the assignment is uniform whatever the key's form and so
    that changing ``cfg.salt`` reshuffles the split reproducibly.
    """
    digest = hashlib.sha256(f"{cfg.salt}\x00{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < cfg.train:
        return "train"
    if u < cfg.train + cfg.val:
        return "val"
    return "test"
