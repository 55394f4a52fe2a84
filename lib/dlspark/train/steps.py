"""One optimisation step, one evaluation pass, and moving feeder batches onto the device. Pure torch."""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from itertools import islice
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlspark.train.runtime import Runtime


def open_batches(spec: Any, *, rank: int, world_size: int, epoch: int) -> AbstractContextManager[Iterator[dict[str, np.ndarray]]]:
    """The feeder's batches of ``spec`` for this rank and epoch (``dlspark.feed.open_batches``)."""
    from dlspark.feed import open_batches as feed_open_batches

    return feed_open_batches(spec, rank=rank, world_size=world_size, epoch=epoch)


def trim_padding(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Text batches: drop the token columns that are padding in every row (dynamic padding).

    Tables store ``input_ids`` padded to a fixed length; most tweets use well under half of it, and the
    encoder's cost grows with the length. Masked mean pooling gives the same result on the trimmed batch.
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.shape[1] == 0:
        return batch
    used = int(np.flatnonzero(mask.any(axis=0)).max(initial=0)) + 1
    if used == mask.shape[1]:
        return batch
    return {k: (v[:, :used] if k in ("input_ids", "attention_mask") else v) for k, v in batch.items()}


def to_device(batch: dict[str, np.ndarray], rt: Runtime, nhwc: bool) -> dict[str, torch.Tensor]:
    """numpy batch -> tensors on ``rt.device`` (zero-copy on CPU); images as logical NCHW; text padding trimmed."""
    batch = trim_padding(batch)
    out = {k: torch.from_numpy(np.ascontiguousarray(v)).to(rt.device, non_blocking=True) for k, v in batch.items()}
    if "x" in out:
        x = out["x"].permute(0, 3, 1, 2) if nhwc else out["x"]  # [B, H, W, C] -> [B, C, H, W] view
        out["x"] = x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x.contiguous()
    return out


def forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (B, num_classes) of an image batch (``x``) or a text batch (``input_ids``, ``attention_mask``)."""
    if "x" in batch:
        return model(batch["x"])
    return model(batch["input_ids"], batch["attention_mask"])


def new_sums(device: torch.device) -> torch.Tensor:
    """Running [loss * n, correct, n] of an epoch, kept on the device (no host sync per step)."""
    return torch.zeros(3, dtype=torch.float64, device=device)


LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def hard_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy against the labels."""
    return F.cross_entropy(logits, batch["y"])


def distillation_loss(temperature: float, alpha: float) -> LossFn:
    """``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels)`` (Hinton et al.
    2015: the T^2 keeps the soft term's gradients at the scale of the hard term's as T changes); the batch carries
    the teacher's logits in ``"teacher"`` (see ``FeedSpec.teacher_column``)."""
    def loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "teacher" not in batch:
            raise ValueError("distillation needs the teacher's logits in every batch: build the feed with teacher_column")
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(batch["teacher"].float() / temperature, dim=1),
                        reduction="batchmean", log_target=True)
        return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(logits, batch["y"])

    return loss


def train_step(model: nn.Module, optimizer: Any, scheduler: Any, scaler: torch.amp.GradScaler, strategy: Any,
               batch: dict[str, torch.Tensor], rt: Runtime, sums: torch.Tensor, loss_fn: LossFn = hard_loss) -> None:
    """Forward, backward (all-reduced by the strategy), optimizer and LR step; add to ``sums``."""
    model.train()
    with rt.autocast():
        logits = forward(model, batch)
        loss = loss_fn(logits.float(), batch)
    optimizer.zero_grad()  # horovod's DistributedOptimizer takes no set_to_none (grads become None either way)
    scaler.scale(loss).backward()
    strategy.step(optimizer, scaler)
    scheduler.step()
    _accumulate(sums, loss.detach(), logits.detach(), batch["y"])


def _accumulate(sums: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    n = y.shape[0]
    sums[0] += loss.double() * n
    sums[1] += (logits.argmax(1) == y).sum()
    sums[2] += n


def _accumulate_weighted(sums: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> None:
    """Add an evaluation batch; rows of weight 0 (a rank's repeated padding rows) count for nothing."""
    w = torch.ones_like(y, dtype=torch.float64) if weight is None else weight.double()
    sums[0] += (F.cross_entropy(logits, y, reduction="none").double() * w).sum()
    sums[1] += ((logits.argmax(1) == y).double() * w).sum()
    sums[2] += w.sum()


@torch.no_grad()
def evaluate(model: nn.Module, spec: Any, strategy: Any, rt: Runtime, max_steps: int | None = None) -> dict[str, float]:
    """Loss and accuracy of ``model`` on ``spec`` over all ranks' shards (every rank gets the same numbers); each row
    of the split counts once (the padding rows that even out the ranks' batch counts have weight 0)."""
    model.eval()
    sums = new_sums(rt.device)
    nhwc = bool(getattr(spec, "channels_last", False))
    with open_batches(spec, rank=strategy.rank, world_size=strategy.world_size, epoch=0) as batches:
        for raw in islice(batches, max_steps):
            batch = to_device(raw, rt, nhwc)
            with rt.autocast():
                logits = forward(model, batch).float()
            _accumulate_weighted(sums, logits, batch["y"], batch.get("weight"))
    return summarize(strategy.allreduce_sum(sums))


def summarize(sums: torch.Tensor) -> dict[str, float]:
    """``{"loss", "accuracy", "count"}`` from summed [loss * n, correct, n]."""
    loss_sum, correct, n = (float(v) for v in sums.cpu())
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan, "count": 0.0}
    return {"loss": loss_sum / n, "accuracy": correct / n, "count": n}


@torch.no_grad()
def predict_split(model: nn.Module, spec: Any, rt: Runtime, keep_mistakes: int = 20) -> dict[str, Any]:
    """One process over the whole split (no padding rows): ``probs [n, classes]``, ``y [n]`` and ``examples``, the
    model inputs of the ``keep_mistakes`` most confident wrong rows by row index (images as the normalised
    ``x``, text as ``input_ids`` with padding cut) — at most that many rows are held, whatever the split's size."""
    model.eval()
    nhwc = bool(getattr(spec, "channels_last", False))
    probs, ys, held = [], [], []   # held: (confidence, row, input)
    offset = 0
    with open_batches(spec, rank=0, world_size=1, epoch=0) as batches:
        for raw in batches:
            batch = to_device(raw, rt, nhwc)
            with rt.autocast():
                p = torch.softmax(forward(model, batch).float(), dim=1).cpu().numpy()
            y = raw["y"]
            for i in np.flatnonzero(p.argmax(1) != y):
                held.append((float(p[i].max()), offset + int(i), _example(raw, int(i))))
            held = sorted(held, key=lambda h: -h[0])[:keep_mistakes]
            probs.append(p)
            ys.append(y)
            offset += len(y)
    return {"probs": np.concatenate(probs) if probs else np.zeros((0, 0), np.float32),
            "y": np.concatenate(ys) if ys else np.zeros(0, np.int64), "examples": {row: x for _, row, x in held}}


def _example(raw: dict[str, np.ndarray], i: int) -> np.ndarray:
    if "x" in raw:
        return raw["x"][i].copy()
    ids, mask = raw["input_ids"][i], raw["attention_mask"][i]
    return ids[: int(mask.sum())].copy()
