"""``train_worker``: the one training function every backend runs (local, Horovod, TorchDistributor/DDP).

Per phase (see ``phases``): build the model from its spec, wrap it for the backend, then per epoch train on
this rank's shard, validate on all shards, track the best model and early stopping; rank 0 alone logs and
writes checkpoints (every ``train.checkpoint_every_steps`` optimizer steps and at each epoch end). A rerun with
the same run name resumes from the latest complete checkpoint: it replays the interrupted epoch's feeder order
(deterministic per (seed, epoch)) and skips the batches already trained, so no epoch is counted twice.
"""
from __future__ import annotations

import logging
import time
from itertools import islice
from typing import Any

import torch

from dlspark.models import build_model
from dlspark.train import steps
from dlspark.train.checkpoint import CheckpointStore
from dlspark.train.job import TrainJob, TrainResult, weights_digest
from dlspark.train.phases import LoopState, Phase, apply_trainable, better, make_optimizer, plan_phases, warmup_steps
from dlspark.train.progress import StepProgress
from dlspark.train.runtime import epoch_seed, resolve_runtime, seed_everything
from dlspark.train.schedule import make_scheduler, scaled_lr
from dlspark.train.sizing import planned_steps
from dlspark.train.strategy import LocalStrategy, make_strategy
from dlspark.train.transfer import load_transferable

logger = logging.getLogger(__name__)


def train_worker(job: TrainJob) -> TrainResult | None:
    """Train ``job`` in this process; rank 0 returns the :class:`TrainResult`, other ranks None."""
    strategy = make_strategy(job.config.backend)
    try:
        result = Trainer(job, strategy).run()
        strategy.barrier()
        return result if strategy.rank == 0 else None
    finally:
        strategy.close()


class Trainer:
    """The state of one training process: job, strategy, runtime, checkpoint store, loop position."""

    def __init__(self, job: TrainJob, strategy: LocalStrategy) -> None:
        cfg = job.config
        self.job, self.cfg, self.strategy = job, cfg, strategy
        self.rank0 = strategy.rank == 0
        self.rt = resolve_runtime(cfg, strategy.local_rank, image_model=cfg.task == "image_classification")
        self.store = CheckpointStore(job.checkpoint_dir, job.run_name)
        self.spec = job.model_spec
        self.steps_per_epoch = planned_steps(job.train, strategy.world_size, cfg.max_steps_per_epoch)
        self.nhwc = bool(getattr(job.train, "channels_last", False))
        d = cfg.distill
        self.loss = steps.distillation_loss(d.temperature, d.alpha) if d.enabled else steps.hard_loss
        self.timing = {"train_seconds": 0.0, "train_steps": 0.0, "train_samples": 0.0, "eval_seconds": 0.0}
        seed_everything(cfg.seed, cfg.deterministic)

    def run(self) -> TrainResult:
        found = self.store.latest() if self.rank0 else None
        ckpt = self.strategy.broadcast_object(found[1] if found else None)
        state = LoopState.from_dict(ckpt["loop"]) if ckpt else LoopState()
        if ckpt and self.rank0:
            logger.info("resuming %s from %s (epoch %d, step %d)", self.job.run_name, found[0], state.epoch, state.step)
        weights = ckpt["model"] if ckpt else None
        for phase in plan_phases(self.cfg):
            if state.epoch < phase.stop:
                resume = ckpt if ckpt and ckpt["phase"] == phase.name else None
                weights = self._run_phase(phase, state, weights, resume)
        test, digest = self._test()
        return TrainResult(
            history=tuple(state.history), best_epoch=state.best_epoch, best_metric=float(state.best_metric or 0.0),
            monitor=self.cfg.monitor, test_metrics=test, model_path=f"{self.store.uri}/best.pt", model_spec=self.spec,
            backend=self.strategy.name, world_size=self.strategy.world_size,
            resumed_from=found[0] if found else None, stopped_early=state.stopped_early, timing=dict(self.timing),
            weights_digest=digest)

    def _run_phase(self, phase: Phase, state: LoopState, weights: dict | None, resume: dict | None) -> dict:
        """Train the epochs of ``phase`` still to do; return the final weights."""
        model = build_model(self.spec)
        if weights is not None:
            model.load_state_dict(weights)
        elif self.job.init_weights is not None:        # a transfer run's first phase, not resumed
            load_transferable(model, self.job.init_weights)
        apply_trainable(model, phase)
        model.to(self.rt.device, memory_format=torch.channels_last if self.rt.channels_last else torch.preserve_format)
        lr = scaled_lr(phase.lr, self.strategy.world_size, self.cfg.lr_scaling)
        wrapped, optimizer = self.strategy.wrap(model, make_optimizer(self.cfg, model, lr))
        total = self.steps_per_epoch * (phase.stop - phase.start)
        scheduler = make_scheduler(optimizer, warmup_steps(phase, self.steps_per_epoch), total)
        scaler = self.rt.grad_scaler()
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            self.strategy.sync_optimizer(optimizer)
        parts = (wrapped, model, optimizer, scheduler, scaler)
        state.bad_epochs = 0 if resume is None else state.bad_epochs
        while state.epoch < phase.stop:
            self._epoch(phase, state, parts, resume if state.step > 0 else None)
            resume = None
        return {k: v.cpu() for k, v in model.state_dict().items()}

    def _epoch(self, phase: Phase, state: LoopState, parts: tuple, resume: dict | None) -> None:
        """Train one epoch (or the rest of an interrupted one), validate, update best/early stop, checkpoint."""
        wrapped, model, optimizer, scheduler, scaler = parts
        epoch, t0 = state.epoch, time.perf_counter()
        sums = steps.new_sums(self.rt.device)
        if resume is not None and self.rank0:
            sums += torch.tensor(state.partial, dtype=torch.float64, device=self.rt.device)
            torch.set_rng_state(resume["rng"])
        else:
            torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.strategy.rank) + state.step)
        done = self._train_batches(state, parts, sums, phase)
        self.timing["train_seconds"] += time.perf_counter() - t0
        self.timing["train_steps"] += done
        train = steps.summarize(self.strategy.allreduce_sum(sums))
        self.strategy.sync_buffers(model)
        t1 = time.perf_counter()
        val = steps.evaluate(model, self.job.val, self.strategy, self.rt)
        self.timing["eval_seconds"] += time.perf_counter() - t1
        record = {"epoch": epoch, "phase": phase.name, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": scheduler.get_last_lr()[0],
                  "steps": state.step, "seconds": time.perf_counter() - t0}
        self._finish_epoch(state, record, model, phase)
        self._checkpoint(state, parts, phase)

    def _train_batches(self, state: LoopState, parts: tuple, sums: torch.Tensor, phase: Phase) -> int:
        """Run this epoch's remaining batches; checkpoint every ``checkpoint_every_steps``; return steps run."""
        wrapped, model, optimizer, scheduler, scaler = parts
        done, size = 0, self.strategy.world_size
        with steps.open_batches(self.job.train, rank=self.strategy.rank, world_size=size, epoch=state.epoch) as batches:
            total = self.steps_per_epoch
            progress = StepProgress(state.epoch, total, self.cfg.log_every_steps if self.rank0 else 0, first_step=state.step)
            for raw in islice(batches, state.step, self.cfg.max_steps_per_epoch):
                batch = steps.to_device(raw, self.rt, self.nhwc)
                steps.train_step(wrapped, optimizer, scheduler, scaler, self.strategy, batch, self.rt, sums, self.loss)
                self.timing["train_samples"] += len(raw["y"]) * size
                state.step, state.global_step, done = state.step + 1, state.global_step + 1, done + 1
                self._progress(progress, state.step, len(raw["y"]) * size, sums)
                if state.global_step % self.cfg.checkpoint_every_steps == 0:
                    state.partial = [float(v) for v in self.strategy.allreduce_sum(sums.clone()).cpu()]
                    self._checkpoint(state, parts, phase)
        return done

    def _progress(self, progress: StepProgress, step: int, rows: int, sums: torch.Tensor) -> None:
        """Rank 0's step line every ``train.log_every_steps`` (loss and accuracy over its own shard so far)."""
        if progress.due(step, rows):
            running = steps.summarize(sums)
            logger.info("%s", progress.line(step, running["loss"], running["accuracy"]))

    def _finish_epoch(self, state: LoopState, record: dict[str, Any], model: torch.nn.Module, phase: Phase) -> None:
        """Record the epoch, save the best model, decide early stopping; move the position to the next epoch."""
        metric = record[self.cfg.monitor]
        if better(metric, state.best_metric, self.cfg.monitor):
            state.best_metric, state.best_epoch, state.bad_epochs = metric, record["epoch"], 0
            if self.rank0:
                weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                self.store.save_best({"model": weights, "spec": self.spec, "epoch": record["epoch"], "metric": metric})
        else:
            state.bad_epochs += 1
        state.history.append(record)
        state.epoch, state.step, state.partial = state.epoch + 1, 0, [0.0, 0.0, 0.0]
        patience = self.cfg.early_stopping_patience
        if patience and state.bad_epochs >= patience and state.epoch < phase.stop:
            state.stopped_early, state.epoch = True, phase.stop
            if self.rank0:
                logger.info("early stopping after epoch %d: no better %s for %d epochs", record["epoch"], self.cfg.monitor, patience)
        if self.rank0:
            self._log_epoch(record)

    def _checkpoint(self, state: LoopState, parts: tuple, phase: Phase) -> None:
        if not self.rank0:
            return
        wrapped, model, optimizer, scheduler, scaler = parts
        self.store.save({
            "phase": phase.name, "loop": state.to_dict(), "spec": self.spec, "feed_seed": getattr(self.job.train, "seed", None),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": torch.get_rng_state(),
        }, state.epoch, state.step)

    def _log_epoch(self, record: dict[str, Any]) -> None:
        logger.info("epoch %d [%s] train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f (%.1fs)", record["epoch"],
                    record["phase"], record["train_loss"], record["train_accuracy"], record["val_loss"],
                    record["val_accuracy"], record["seconds"])
        if self.job.mlflow_run_id:
            from dlspark.tracking import log_epoch_metrics

            metrics = {k: float(v) for k, v in record.items() if k not in ("epoch", "phase")}
            log_epoch_metrics(self.job.mlflow_tracking_uri, self.job.mlflow_run_id, metrics, step=record["epoch"])

    def _test(self) -> tuple[dict[str, float], str]:
        """Metrics of the best model on the test split (every rank evaluates its shard), and its weights' digest."""
        best = self.strategy.broadcast_object(self.store.load_best() if self.rank0 else None)
        digest = weights_digest(best["model"].items())
        if self.job.test is None:
            return {}, digest
        model = build_model(self.spec)
        model.load_state_dict(best["model"])
        model.to(self.rt.device, memory_format=torch.channels_last if self.rt.channels_last else torch.preserve_format)
        metrics = steps.evaluate(model, self.job.test, self.strategy, self.rt)
        return {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"], "test_count": metrics["count"]}, digest
