"""The one training core both frameworks run: phases, epochs, steps, checkpoints, early stopping, metrics.

:class:`TrainingCore` owns the loop; a :class:`Framework` adapter (``loop.TorchFramework``,
``tf_loop.KerasFramework``) owns the model, the optimizer step, evaluation, the collectives and the checkpoint
files. The core decides *when*; the adapter knows *how*.

Per phase (``phases.plan_phases``): the adapter builds the model; per epoch the core feeds this rank's batches
to ``train_step``, writes step lines every ``train.log_every_steps`` and a checkpoint every
``train.checkpoint_every_steps`` optimizer steps and at each epoch end, validates on all shards, tracks the
best model and early stopping. A rerun with the same run name resumes from the latest complete checkpoint: the
interrupted epoch's feeder order (deterministic per (seed, epoch)) is replayed and the batches already trained
are skipped, so no epoch is counted twice. Metrics are float64 ``[loss * n, correct, n]`` sums, all-reduced.
"""
from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from itertools import islice
from typing import Any, Iterator, Protocol

import numpy as np

from dlspark.train.job import TrainJob, TrainResult
from dlspark.train.phases import LoopState, Phase, better, plan_phases
from dlspark.train.progress import StepProgress
from dlspark.train.sizing import planned_steps

logger = logging.getLogger(__name__)


class Framework(Protocol):
    """What the core needs of a framework: one process's model, optimizer, data and collectives."""

    name: str           # the backend, reported in the TrainResult
    rank: int
    world_size: int

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray: ...
    def broadcast_object(self, obj: Any) -> Any: ...
    def latest_checkpoint(self) -> tuple[str, dict[str, Any]] | None:
        """On every rank: ``(name, {"loop": LoopState dict, "phase": name, ...})`` of the newest checkpoint."""
    def start_phase(self, phase: Phase, steps_per_epoch: int, resume: dict[str, Any] | None) -> None: ...
    def start_epoch(self, epoch: int, step: int, resume: dict[str, Any] | None) -> None:
        """Zero the epoch's sums; seed the RNG (or restore it from ``resume``, a mid-epoch checkpoint)."""
    def open_batches(self, epoch: int) -> AbstractContextManager[Iterator[dict[str, np.ndarray]]]: ...
    def train_step(self, batch: dict[str, np.ndarray], global_step: int) -> int:
        """One optimizer step on this rank's ``batch``; returns its rows."""
    def train_sums(self) -> np.ndarray:
        """This rank's ``[loss * n, correct, n]`` since ``start_epoch``."""
    def end_epoch(self) -> None:
        """Make every rank's model equal where the optimizer does not (BatchNorm statistics)."""
    def evaluate(self, split: str) -> dict[str, float]:
        """``{"loss", "accuracy", "count"}`` over every row of ``split`` (val or test), on every rank."""
    def learning_rate(self) -> float: ...
    def save_checkpoint(self, payload: dict[str, Any], epoch: int, step: int, global_step: int) -> None:
        """Called on every rank (MultiWorkerMirrored saves collectively); others write only on rank 0."""
    def save_best(self, epoch: int, metric: float) -> None: ...
    def end_phase(self) -> None: ...
    def finish(self) -> tuple[dict[str, float], str, dict[str, Any], str]:
        """Load the best model; ``(test metrics, model path, model spec, weights digest)``."""


class TrainingCore:
    """The loop position and the decisions; the framework does the work."""

    def __init__(self, job: TrainJob, fw: Framework) -> None:
        self.job, self.cfg, self.fw = job, job.config, fw
        self.rank0 = fw.rank == 0
        self.steps_per_epoch = planned_steps(job.train, fw.world_size, self.cfg.max_steps_per_epoch)
        self.timing = {"train_seconds": 0.0, "train_steps": 0.0, "train_samples": 0.0, "eval_seconds": 0.0}

    def run(self) -> TrainResult:
        found = self.fw.latest_checkpoint()
        ckpt = found[1] if found else None
        state = LoopState.from_dict(ckpt["loop"]) if ckpt else LoopState()
        if found and self.rank0:
            logger.info("resuming %s from %s (epoch %d, step %d)", self.job.run_name, found[0], state.epoch, state.step)
        for phase in plan_phases(self.cfg):
            if state.epoch < phase.stop:
                resume = ckpt if ckpt and ckpt["phase"] == phase.name else None
                self.fw.start_phase(phase, self.steps_per_epoch, resume)
                state.bad_epochs = 0 if resume is None else state.bad_epochs
                while state.epoch < phase.stop:
                    self._epoch(phase, state, resume if state.step > 0 else None)
                    resume = None
                self.fw.end_phase()
        t0 = time.perf_counter()
        test, model_path, spec, digest = self.fw.finish()
        self.timing["eval_seconds"] += time.perf_counter() - t0
        return TrainResult(
            history=tuple(state.history), best_epoch=state.best_epoch, best_metric=float(state.best_metric or 0.0),
            monitor=self.cfg.monitor, test_metrics=test, model_path=model_path, model_spec=spec,
            backend=self.fw.name, world_size=self.fw.world_size, resumed_from=found[0] if found else None,
            stopped_early=state.stopped_early, timing=dict(self.timing), weights_digest=digest)

    def _epoch(self, phase: Phase, state: LoopState, resume: dict[str, Any] | None) -> None:
        """Train one epoch (or the rest of an interrupted one), validate, update best / early stop, checkpoint."""
        t0 = time.perf_counter()
        carried = np.asarray(state.partial if resume is not None else [0.0, 0.0, 0.0], np.float64)
        self.fw.start_epoch(state.epoch, state.step, resume)
        done = self._train_batches(state, phase, carried)
        self.timing["train_seconds"] += time.perf_counter() - t0
        self.timing["train_steps"] += done
        train = summarize(self.fw.allreduce_sum(self.fw.train_sums()) + carried)
        self.fw.end_epoch()
        t1 = time.perf_counter()
        val = self.fw.evaluate("val")
        self.timing["eval_seconds"] += time.perf_counter() - t1
        record = {"epoch": state.epoch, "phase": phase.name, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": self.fw.learning_rate(),
                  "steps": state.step, "seconds": time.perf_counter() - t0}
        self._finish_epoch(state, record, phase)
        self._checkpoint(state, phase)

    def _train_batches(self, state: LoopState, phase: Phase, carried: np.ndarray) -> int:
        """Run this epoch's remaining batches; checkpoint every ``checkpoint_every_steps``; return steps run."""
        done, size = 0, self.fw.world_size
        every = self.cfg.log_every_steps if self.rank0 else 0
        progress = StepProgress(state.epoch, self.steps_per_epoch, every, first_step=state.step)
        with self.fw.open_batches(state.epoch) as batches:
            for raw in islice(batches, state.step, self.cfg.max_steps_per_epoch):
                rows = self.fw.train_step(raw, state.global_step)
                self.timing["train_samples"] += rows * size
                state.step, state.global_step, done = state.step + 1, state.global_step + 1, done + 1
                if progress.due(state.step, rows * size):
                    running = summarize(self.fw.train_sums())
                    logger.info("%s", progress.line(state.step, running["loss"], running["accuracy"]))
                if state.global_step % self.cfg.checkpoint_every_steps == 0:
                    state.partial = [float(v) for v in self.fw.allreduce_sum(self.fw.train_sums()) + carried]
                    self._checkpoint(state, phase)
        return done

    def _finish_epoch(self, state: LoopState, record: dict[str, Any], phase: Phase) -> None:
        """Record the epoch, save the best model, decide early stopping; move the position to the next epoch."""
        metric = record[self.cfg.monitor]
        if better(metric, state.best_metric, self.cfg.monitor):
            state.best_metric, state.best_epoch, state.bad_epochs = metric, record["epoch"], 0
            self.fw.save_best(record["epoch"], metric)
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

    def _checkpoint(self, state: LoopState, phase: Phase) -> None:
        self.fw.save_checkpoint({"phase": phase.name, "loop": state.to_dict()}, state.epoch, state.step, state.global_step)

    def _log_epoch(self, record: dict[str, Any]) -> None:
        logger.info("epoch %d [%s] train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f (%.1fs)", record["epoch"],
                    record["phase"], record["train_loss"], record["train_accuracy"], record["val_loss"],
                    record["val_accuracy"], record["seconds"])
        if self.job.mlflow_run_id and self.job.mlflow_tracking_uri:
            from dlspark.tracking import log_epoch_metrics

            metrics = {k: float(v) for k, v in record.items() if k not in ("epoch", "phase")}
            log_epoch_metrics(self.job.mlflow_tracking_uri, self.job.mlflow_run_id, metrics, step=record["epoch"])


def summarize(sums: Any) -> dict[str, float]:
    """``{"loss", "accuracy", "count"}`` from summed ``[loss * n, correct, n]``."""
    loss_sum, correct, n = (float(v) for v in np.asarray(sums, np.float64))
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "count": 0.0}
    return {"loss": loss_sum / n, "accuracy": correct / n, "count": n}
