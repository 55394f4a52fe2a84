"""``train_worker`` for ``train.framework: torch``: the one training function every torch backend runs (local,
Horovod, TorchDistributor/DDP), as :class:`TorchFramework` under the shared :class:`~dlspark.train.core.TrainingCore`.

Per phase the adapter builds the model from its spec (the previous phase's weights, a checkpoint's, or a transfer
source's), freezes what the phase says, and wraps model and optimizer for the backend; rank 0 alone writes the
checkpoints (``ckpt-e<epoch>-s<step>.pt``: model, optimizer, scheduler, grad scaler, RNG) and ``best.pt``.
"""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any, Iterator

import numpy as np
import torch

from dlspark.models import build_model
from dlspark.train import steps
from dlspark.train.checkpoint import CheckpointStore
from dlspark.train.core import TrainingCore
from dlspark.train.job import TrainJob, TrainResult, weights_digest
from dlspark.train.phases import Phase, apply_trainable, make_optimizer, warmup_steps
from dlspark.train.runtime import epoch_seed, resolve_runtime, seed_everything
from dlspark.train.schedule import make_scheduler, scaled_lr
from dlspark.train.strategy import LocalStrategy, make_strategy
from dlspark.train.transfer import load_transferable

logger = logging.getLogger(__name__)


def train_worker(job: TrainJob) -> TrainResult | None:
    """Train ``job`` in this process; rank 0 returns the :class:`TrainResult`, other ranks None."""
    strategy = make_strategy(job.config.backend)
    try:
        result = TrainingCore(job, TorchFramework(job, strategy)).run()
        strategy.barrier()
        return result if strategy.rank == 0 else None
    finally:
        strategy.close()


class TorchFramework:
    """One torch process: runtime (device, precision), strategy, checkpoint store and the current phase's parts."""

    def __init__(self, job: TrainJob, strategy: LocalStrategy) -> None:
        cfg = job.config
        self.job, self.cfg, self.strategy = job, cfg, strategy
        self.name, self.rank, self.world_size = strategy.name, strategy.rank, strategy.world_size
        self.rank0 = strategy.rank == 0
        self.rt = resolve_runtime(cfg, strategy.local_rank, image_model=cfg.task == "image_classification")
        self.store = CheckpointStore(job.checkpoint_dir, job.run_name)
        self.spec = job.model_spec
        self.nhwc = bool(getattr(job.train, "channels_last", False))
        d = cfg.distill
        self.loss = steps.distillation_loss(d.temperature, d.alpha) if d.enabled else steps.hard_loss
        self.weights: dict[str, torch.Tensor] | None = None
        self.parts: tuple = ()
        self.sums = steps.new_sums(self.rt.device)
        seed_everything(cfg.seed, cfg.deterministic)

    # collectives
    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return self.strategy.allreduce_sum(torch.as_tensor(values, dtype=torch.float64, device=self.rt.device)).cpu().numpy()

    def broadcast_object(self, obj: Any) -> Any:
        return self.strategy.broadcast_object(obj)

    # phases and epochs
    def latest_checkpoint(self) -> tuple[str, dict[str, Any]] | None:
        found = self.strategy.broadcast_object(self.store.latest() if self.rank0 else None)
        if found:
            self.weights = found[1]["model"]
        return found

    def start_phase(self, phase: Phase, steps_per_epoch: int, resume: dict[str, Any] | None) -> None:
        model = build_model(self.spec)
        if self.weights is not None:
            model.load_state_dict(self.weights)
        elif self.job.init_weights is not None:        # a transfer run's first phase, not resumed
            load_transferable(model, self.job.init_weights)
        apply_trainable(model, phase)
        model.to(self.rt.device, memory_format=self._memory_format())
        lr = scaled_lr(phase.lr, self.world_size, self.cfg.lr_scaling)
        wrapped, optimizer = self.strategy.wrap(model, make_optimizer(self.cfg, model, lr))
        scheduler = make_scheduler(optimizer, warmup_steps(phase, steps_per_epoch), steps_per_epoch * (phase.stop - phase.start))
        scaler = self.rt.grad_scaler()
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            self.strategy.sync_optimizer(optimizer)
        self.parts = (wrapped, model, optimizer, scheduler, scaler)

    def start_epoch(self, epoch: int, step: int, resume: dict[str, Any] | None) -> None:
        self.sums = steps.new_sums(self.rt.device)
        if resume is not None and self.rank0:
            torch.set_rng_state(resume["rng"])
        else:
            torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.rank) + step)

    def open_batches(self, epoch: int) -> AbstractContextManager[Iterator[dict[str, np.ndarray]]]:
        return steps.open_batches(self.job.train, rank=self.rank, world_size=self.world_size, epoch=epoch)

    def train_step(self, batch: dict[str, np.ndarray], global_step: int) -> int:
        wrapped, _, optimizer, scheduler, scaler = self.parts
        steps.train_step(wrapped, optimizer, scheduler, scaler, self.strategy, steps.to_device(batch, self.rt, self.nhwc),
                         self.rt, self.sums, self.loss)
        return len(batch["y"])

    def train_sums(self) -> np.ndarray:
        return self.sums.cpu().numpy()

    def end_epoch(self) -> None:
        self.strategy.sync_buffers(self.parts[1])

    def evaluate(self, split: str) -> dict[str, float]:
        spec = self.job.val if split == "val" else self.job.test
        return steps.evaluate(self.parts[1], spec, self.strategy, self.rt)

    def learning_rate(self) -> float:
        return float(self.parts[3].get_last_lr()[0])

    def end_phase(self) -> None:
        self.weights = {k: v.cpu() for k, v in self.parts[1].state_dict().items()}

    # files (rank 0 alone writes)
    def save_checkpoint(self, payload: dict[str, Any], epoch: int, step: int, global_step: int) -> None:
        if not self.rank0:
            return
        _, model, optimizer, scheduler, scaler = self.parts
        self.store.save({
            **payload, "spec": self.spec, "feed_seed": getattr(self.job.train, "seed", None),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": torch.get_rng_state(),
        }, epoch, step)

    def save_best(self, epoch: int, metric: float) -> None:
        if self.rank0:
            weights = {k: v.detach().cpu() for k, v in self.parts[1].state_dict().items()}
            self.store.save_best({"model": weights, "spec": self.spec, "epoch": epoch, "metric": metric})

    def finish(self) -> tuple[dict[str, float], str, dict[str, Any], str]:
        """Metrics of the best model on the test split (every rank evaluates its shard), and its weights' digest."""
        best = self.strategy.broadcast_object(self.store.load_best() if self.rank0 else None)
        digest, path = weights_digest(best["model"].items()), f"{self.store.uri}/best.pt"
        if self.job.test is None:
            return {}, path, self.spec, digest
        model = build_model(self.spec)
        model.load_state_dict(best["model"])
        model.to(self.rt.device, memory_format=self._memory_format())
        metrics = steps.evaluate(model, self.job.test, self.strategy, self.rt)
        test = {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"], "test_count": metrics["count"]}
        return test, path, self.spec, digest

    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.rt.channels_last else torch.preserve_format
