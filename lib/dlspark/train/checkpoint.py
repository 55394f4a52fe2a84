"""Atomic checkpoints under ``<checkpoint_dir>/<run_name>/`` on any fsspec filesystem.

A checkpoint is written to a hidden temp name and renamed to ``ckpt-e<epoch>-s<step>.pt`` only once complete,
so a process killed mid-write leaves a ``.tmp-*`` file that :meth:`CheckpointStore.latest` ignores. ``epoch`` and
``step`` name the position to resume at: the epoch being trained and the batches of it already done
(an end-of-epoch checkpoint is ``e<next epoch>-s0``). The best model lives beside them in ``best.pt``.
"""
from __future__ import annotations

import io
import logging
import re
import uuid
from typing import Any

import torch

from dlspark.filesystem import resolve

logger = logging.getLogger(__name__)
_NAME = re.compile(r"ckpt-e(\d{5})-s(\d{8})\.pt$")
BEST = "best.pt"


class CheckpointStore:
    """Checkpoints of one run; only rank 0 writes. ``keep`` complete checkpoints are retained."""

    def __init__(self, checkpoint_dir: str, run_name: str, keep: int = 2) -> None:
        self.fs, root = resolve(checkpoint_dir)
        self.dir = f"{root.rstrip('/')}/{run_name}"
        self.uri = f"{checkpoint_dir.rstrip('/')}/{run_name}"
        self.keep = keep

    def save(self, state: dict[str, Any], epoch: int, step: int) -> str:
        """Write ``state`` atomically as the checkpoint at (``epoch``, ``step``); prune old ones; return its path."""
        path = self._write(f"ckpt-e{epoch:05d}-s{step:08d}.pt", state)
        for old in self.checkpoints()[:-self.keep]:
            self.fs.rm(old)
        return path

    def checkpoints(self) -> list[str]:
        """Complete checkpoint paths, oldest first (temp files excluded)."""
        if not self.fs.exists(self.dir):
            return []
        return sorted(p for p in self.fs.ls(self.dir, detail=False) if _NAME.search(p))

    def latest(self) -> tuple[str, dict[str, Any]] | None:
        """``(path, state)`` of the newest checkpoint that loads; None when the run has none."""
        for path in reversed(self.checkpoints()):
            try:
                return path, self._read(path)
            except Exception as err:  # noqa: BLE001 - a damaged file must not block resuming from an older one
                logger.warning("checkpoint %s is unreadable (%s); trying the previous one", path, err)
        return None

    def save_best(self, state: dict[str, Any]) -> str:
        """Write the best model (``{"model": state_dict, "spec": ..., ...}``) atomically; return its URI."""
        self._write(BEST, state)
        return f"{self.uri}/{BEST}"

    def load_best(self) -> dict[str, Any]:
        return self._read(f"{self.dir}/{BEST}")

    def _write(self, name: str, state: dict[str, Any]) -> str:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.fs.makedirs(self.dir, exist_ok=True)
        final, tmp = f"{self.dir}/{name}", f"{self.dir}/.tmp-{uuid.uuid4().hex}-{name}"
        with self.fs.open(tmp, "wb") as f:
            f.write(buf.getbuffer())
        self.fs.mv(tmp, final)  # rename: atomic on local/HDFS; object stores publish the key only when complete
        return final

    def _read(self, path: str) -> dict[str, Any]:
        with self.fs.open(path, "rb") as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
