"""``train_worker`` for ``train.framework: tensorflow``: the image task with a Keras model in a custom loop.

One function for both backends: ``local`` (one process) and ``horovod`` (``horovod.spark.run`` starts it once
per rank; Gloo on CPU, NCCL on GPU). Per optimizer step the gradients go through horovod.tensorflow's
``DistributedGradientTape`` (an allreduce average). The optimizer's slots are built up front, so rank 0's
initial state (model and optimizer variables, restored ones on a resume) is broadcast to every rank *before*
the first step rather than after it. The LR is ``train.lr`` x world size (``lr_scaling: linear``) with linear
warmup then cosine decay per step (as ``dlspark.train.schedule``). Batches come from
``dlspark.feed.tf_dataset`` (NHWC), sharded by rank with equal batch counts.

Rank 0 alone writes: a TF checkpoint at each epoch end (a rerun with the same run name resumes at the next
epoch, never counting one twice; ``checkpoint_every_steps`` does not apply here), ``best.weights.h5`` when the
monitored validation metric improves, and at the end the best model as a SavedModel in ``saved_model/``.
Local paths and TF-native URIs (``gs://``, ``hdfs://``) work as ``train.checkpoint_dir``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dlspark.models.keras_image import build_keras_model
from dlspark.train.job import TrainJob, TrainResult, weights_digest
from dlspark.train.phases import better
from dlspark.train.schedule import scaled_lr
from dlspark.train.sizing import planned_steps

logger = logging.getLogger(__name__)
BEST_WEIGHTS, SAVED_MODEL, CKPT_DIR = "best.weights.h5", "saved_model", "tf_ckpt"


class LocalTF:
    """One process: collectives are the identity."""

    name, rank, local_rank, local_size, world_size = "local", 0, 0, 1, 1

    def tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        return tape

    def broadcast_variables(self, variables: list) -> None:
        """Give every rank rank 0's values of ``variables``."""

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def broadcast_object(self, obj: Any) -> Any:
        return obj


class HorovodTF(LocalTF):
    """``horovod.tensorflow``: gradients averaged by ``DistributedGradientTape``; Gloo or NCCL underneath."""

    name = "horovod"

    def __init__(self) -> None:
        import horovod.tensorflow as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.local_rank, self.local_size, self.world_size = hvd.rank(), hvd.local_rank(), hvd.local_size(), hvd.size()

    def tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        return self.hvd.DistributedGradientTape(tape)

    def broadcast_variables(self, variables: list) -> None:
        # Keras 3 variables wrap a tf.Variable; horovod's broadcast_group assigns inside a tf.function, where a
        # Keras variable would be converted to a read-only tensor, so hand it the tf.Variables themselves.
        self.hvd.broadcast_variables([_tf_variable(v) for v in variables], root_rank=0)

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return self.hvd.allreduce(tf.constant(values, tf.float64), op=self.hvd.Sum).numpy()

    def broadcast_object(self, obj: Any) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0)


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """``peak * (s + 1) / warmup`` for the first ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def __init__(self, peak: float, warmup: int, total: int) -> None:
        self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warm = (step + 1.0) / max(self.warmup, 1)
        progress = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        return self.peak * tf.where(step < self.warmup, warm, 0.5 * (1.0 + tf.cos(math.pi * progress)))

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total}


def make_strategy(backend: str) -> LocalTF:
    """The strategy of ``train.backend`` (``local`` or ``horovod``)."""
    if backend == "local":
        return LocalTF()
    if backend == "horovod":
        return HorovodTF()
    raise ValueError(f"train.backend {backend!r} cannot run TensorFlow; use local or horovod")


def keras_model_spec(job: TrainJob) -> dict[str, Any]:
    """The Keras model spec of ``job``: ``job.model`` (a ``keras_cnn`` spec, or a torch ``cnn`` spec whose widths,
    hidden size and dropout carry over) or the default CNN; the input shape is the train feed's."""
    spec = dict(job.model or {"name": "cnn"})
    if job.config.model != "cnn" or spec.get("name") not in ("cnn", "keras_cnn"):
        raise ValueError(f"framework tensorflow has the Keras CNN only; set train.model=cnn (got {job.config.model!r}, "
                         f"spec {spec.get('name')!r})")
    keep = {k: spec[k] for k in ("widths", "hidden", "dropout") if k in spec}
    return {"name": "keras_cnn", "image_shape": list(job.train.image_shape), "num_classes": job.num_classes, **keep}


def train_worker(job: TrainJob) -> TrainResult | None:
    """Train ``job`` in this process (any backend's rank); rank 0 returns the :class:`TrainResult`."""
    dist = make_strategy(job.config.backend)
    _configure_tf(job, dist)
    result = TFTrainer(job, dist).run()
    return result if dist.rank == 0 else None


def _configure_tf(job: TrainJob, dist: LocalTF) -> None:
    """Threads per process, one GPU per local rank, mixed-precision policy, seeds."""
    cfg = job.config
    gpus = tf.config.list_physical_devices("GPU") if cfg.device != "cpu" else []
    if cfg.device == "cuda" and not gpus:
        raise RuntimeError("train.device is 'cuda' but TensorFlow sees no GPU; set train.device=auto or cpu")
    try:  # possible only before TensorFlow's runtime starts: a fresh horovod process, not a reused one
        tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // dist.local_size))
        if gpus:
            gpu = gpus[dist.local_rank % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
    except RuntimeError as exc:
        if dist.world_size > 1 and len(gpus) > 1:
            raise RuntimeError(f"cannot pin rank {dist.rank} to one GPU: TensorFlow was initialised before "
                               "train_worker ran; start each rank in a fresh process (horovod.spark.run does)") from exc
        logger.debug("TensorFlow already initialised; keeping its thread and device settings (%s)", exc)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if gpus else "fp32")
    if precision == "fp16" and not gpus:
        logger.warning("train.precision fp16 needs a GPU; using fp32 on CPU")
        precision = "fp32"
    keras.mixed_precision.set_global_policy({"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision])
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()


class TFTrainer:
    """State of one TensorFlow training process."""

    def __init__(self, job: TrainJob, dist: LocalTF) -> None:
        self.job, self.cfg, self.dist, self.rank0 = job, job.config, dist, dist.rank == 0
        self.spec = keras_model_spec(job)
        self.dir = f"{job.checkpoint_dir.removeprefix('file://').rstrip('/')}/{job.run_name}"
        self.steps_per_epoch = planned_steps(job.train, dist.world_size, self.cfg.max_steps_per_epoch)
        self.model = build_keras_model(self.spec)
        self.optimizer = self._optimizer()
        self.optimizer.build(self.model.trainable_variables)
        self.state = {"epoch": 0, "best_metric": None, "best_epoch": -1, "bad_epochs": 0, "history": [], "stopped_early": False}
        self.state_var = tf.Variable("", dtype=tf.string, trainable=False)
        ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, state=self.state_var)
        self.manager = tf.train.CheckpointManager(ckpt, f"{self.dir}/{CKPT_DIR}", max_to_keep=2)
        self.timing = {"train_seconds": 0.0, "train_steps": 0.0, "train_samples": 0.0, "eval_seconds": 0.0}
        self._train_step, self._eval_step = self._compile_steps()

    def _optimizer(self) -> keras.optimizers.Optimizer:
        cfg, peak = self.cfg, scaled_lr(self.cfg.lr, self.dist.world_size, self.cfg.lr_scaling)
        schedule = WarmupCosine(peak, math.ceil(cfg.warmup_epochs * self.steps_per_epoch), self.steps_per_epoch * cfg.epochs)
        if cfg.optimizer == "sgd":
            opt = keras.optimizers.SGD(schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None)
        else:
            opt = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
        return keras.optimizers.LossScaleOptimizer(opt) if keras.mixed_precision.global_policy().name == "mixed_float16" else opt

    def _compile_steps(self) -> tuple[Any, Any]:
        model, optimizer, dist = self.model, self.optimizer, self.dist
        # horovod's DistributedGradientTape keys gradients by ``source.ref()``, which tf.Variables have and
        # Keras 3 variables do not: differentiate with respect to the tf.Variables they wrap.
        sources = [_tf_variable(v) for v in model.trainable_variables]

        @tf.function(reduce_retracing=True)
        def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
                scaled = optimizer.scale_loss(loss)
            grads = dist.tape(tape).gradient(scaled, sources)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return _sums(loss * tf.cast(tf.shape(y)[0], tf.float32), logits, y)

        @tf.function(reduce_retracing=True)
        def eval_step(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
            logits = model(x, training=False)
            loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            return _sums(tf.reduce_sum(loss * w), logits, y, w)

        return train_step, eval_step

    def run(self) -> TrainResult:
        resumed = self._restore()
        self.dist.broadcast_variables(self.model.variables + list(self.optimizer.variables))
        while self.state["epoch"] < self.cfg.epochs and not self.state["stopped_early"]:
            self._epoch(self.state["epoch"])
        test = self._test()
        export = f"{self.dir}/{SAVED_MODEL}"
        if self.rank0:
            self.model.export(export, format="tf_saved_model", verbose=False)
        return TrainResult(
            history=tuple(self.state["history"]), best_epoch=self.state["best_epoch"],
            best_metric=float(self.state["best_metric"] or 0.0), monitor=self.cfg.monitor, test_metrics=test,
            model_path=export, model_spec=self.spec, backend=self.dist.name, world_size=self.dist.world_size,
            resumed_from=resumed, stopped_early=self.state["stopped_early"], timing=dict(self.timing),
            weights_digest=weights_digest((str(i), w) for i, w in enumerate(self.model.get_weights())))

    def _restore(self) -> str | None:
        latest = self.manager.latest_checkpoint if self.rank0 else None
        if latest:
            self.manager.checkpoint.restore(latest).assert_existing_objects_matched()
            self.state = json.loads(self.state_var.numpy().decode())
            logger.info("resuming %s from %s at epoch %d", self.job.run_name, latest, self.state["epoch"])
        self.state = self.dist.broadcast_object(self.state)
        return self.dist.broadcast_object(latest)

    def _epoch(self, epoch: int) -> None:
        from dlspark.feed import tf_dataset

        t0, size = time.perf_counter(), self.dist.world_size
        sums, steps = np.zeros(3), 0
        data = tf_dataset(self.job.train, self.dist.rank, size, epoch).take(self.cfg.max_steps_per_epoch or -1)
        for x, y, _ in data:
            sums += self._train_step(x, y).numpy()
            steps += 1
        self.timing["train_seconds"] += time.perf_counter() - t0
        self.timing["train_steps"] += steps
        self.timing["train_samples"] += float(sums[2]) * size
        train = _summary(self.dist.allreduce_sum(sums))
        self.dist.broadcast_variables(self.model.non_trainable_variables)  # BatchNorm statistics of rank 0
        val = self._evaluate(self.job.val, epoch)
        record = {"epoch": epoch, "phase": "train", "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": float(self.optimizer.learning_rate),
                  "steps": steps, "seconds": time.perf_counter() - t0}
        self._finish_epoch(record)

    def _evaluate(self, spec: Any, epoch: int = 0) -> dict[str, float]:
        from dlspark.feed import tf_dataset

        t0, sums = time.perf_counter(), np.zeros(3)
        for x, y, w in tf_dataset(spec, self.dist.rank, self.dist.world_size, epoch):
            sums += self._eval_step(x, y, w).numpy()
        self.timing["eval_seconds"] += time.perf_counter() - t0
        return _summary(self.dist.allreduce_sum(sums))

    def _finish_epoch(self, record: dict[str, Any]) -> None:
        state, metric = self.state, record[self.cfg.monitor]
        if better(metric, state["best_metric"], self.cfg.monitor):
            state.update(best_metric=metric, best_epoch=record["epoch"], bad_epochs=0)
            if self.rank0:
                tf.io.gfile.makedirs(self.dir)
                self.model.save_weights(f"{self.dir}/{BEST_WEIGHTS}")
        else:
            state["bad_epochs"] += 1
        state["history"].append(record)
        state["epoch"] = record["epoch"] + 1
        patience = self.cfg.early_stopping_patience
        state["stopped_early"] = bool(patience and state["bad_epochs"] >= patience and state["epoch"] < self.cfg.epochs)
        if self.rank0:
            self.state_var.assign(json.dumps(state))
            self.manager.save()
            self._log_epoch(record)

    def _log_epoch(self, record: dict[str, Any]) -> None:
        logger.info("epoch %d train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f (%.1fs)", record["epoch"],
                    record["train_loss"], record["train_accuracy"], record["val_loss"], record["val_accuracy"], record["seconds"])
        if self.job.mlflow_run_id:
            from dlspark.tracking import log_epoch_metrics

            metrics = {k: float(v) for k, v in record.items() if k not in ("epoch", "phase")}
            log_epoch_metrics(self.job.mlflow_tracking_uri, self.job.mlflow_run_id, metrics, step=record["epoch"])

    def _test(self) -> dict[str, float]:
        """Load the best weights (rank 0's file, broadcast) and evaluate the test split on all ranks."""
        if self.rank0 and tf.io.gfile.exists(f"{self.dir}/{BEST_WEIGHTS}"):
            self.model.load_weights(f"{self.dir}/{BEST_WEIGHTS}")
        self.dist.broadcast_variables(self.model.variables)
        if self.job.test is None:
            return {}
        metrics = self._evaluate(self.job.test)
        return {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"], "test_count": metrics["count"]}


def load_best_keras_model(result: TrainResult) -> Any:
    """The trained Keras model of a TensorFlow :class:`TrainResult` (for MLflow logging or inference)."""
    model = build_keras_model(result.model_spec)
    model.load_weights(f"{result.model_path.rsplit('/', 1)[0]}/{BEST_WEIGHTS}")
    return model


def _tf_variable(var: Any) -> tf.Variable:
    inner = getattr(var, "value", var)
    if not isinstance(inner, tf.Variable):
        raise TypeError(f"cannot broadcast {var!r}: it holds no tf.Variable (is the Keras backend TensorFlow?)")
    return inner


def _sums(loss_sum: tf.Tensor, logits: tf.Tensor, y: tf.Tensor, w: tf.Tensor | None = None) -> tf.Tensor:
    """[summed loss, correct predictions, examples] of one batch, float64 for exact accumulation; rows of weight
    ``w`` 0 (padding) count for nothing."""
    weight = tf.ones_like(y, tf.float64) if w is None else tf.cast(w, tf.float64)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1), y), tf.float64) * weight)
    return tf.stack([tf.cast(loss_sum, tf.float64), correct, tf.reduce_sum(weight)])


def _summary(sums: np.ndarray) -> dict[str, float]:
    n = float(sums[2])
    return {"loss": float(sums[0]) / n if n else math.nan, "accuracy": float(sums[1]) / n if n else math.nan, "count": n}
