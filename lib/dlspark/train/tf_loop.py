"""``train_worker`` for ``train.framework: tensorflow``: a Keras model as :class:`KerasFramework` under the shared
:class:`~dlspark.train.core.TrainingCore` (the same phases, epochs, step checkpoints, early stopping, metrics,
progress lines and learning-rate schedule as torch).

Three strategies, one per ``train.backend``:

- ``local``: one process.
- ``horovod``: ``horovod.spark.run`` starts one process per rank; gradients are averaged by horovod.tensorflow's
  ``DistributedGradientTape``; rank 0's variables (restored ones on a resume) are broadcast before the first step.
- ``tf_multiworker``: TensorFlow's own ``MultiWorkerMirroredStrategy``, one process per Spark barrier task with
  ``TF_CONFIG`` built from the tasks' addresses (``dlspark.train.tf_multiworker``). Variables are mirrored;
  gradients are summed by TF's collectives, so each replica's loss is divided by the *global* batch's rows.

The learning rate follows ``dlspark.train.schedule.lr_factor`` per optimizer step (linear warmup, cosine decay,
peak ``train.lr`` x world size under ``lr_scaling: linear``), set on the optimizer before each step. Checkpoints
are TensorFlow checkpoints numbered by global step under ``<checkpoint_dir>/<run_name>/tf_ckpt`` (model,
optimizer, and the core's loop position as a string variable, all in one atomic write); ``best.weights.h5``
holds the best epoch; at the end the best model is exported as a SavedModel in ``saved_model/``. Local paths and
TF-native URIs (``gs://``, ``hdfs://``) work as ``train.checkpoint_dir`` (shared storage for multi-host runs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
from contextlib import AbstractContextManager
from typing import Any, Iterator

import keras
import numpy as np
import tensorflow as tf

from dlspark.feed.stream import WEIGHT
from dlspark.models.keras_image import build_keras_model
from dlspark.train.core import TrainingCore
from dlspark.train.job import TrainJob, TrainResult, weights_digest
from dlspark.train.phases import Phase, warmup_steps
from dlspark.train.schedule import lr_factor, scaled_lr

logger = logging.getLogger(__name__)
BEST_WEIGHTS, SAVED_MODEL, CKPT_DIR = "best.weights.h5", "saved_model", "tf_ckpt"
TF_BACKENDS = ("local", "horovod", "tf_multiworker")


class LocalTF:
    """One process: collectives are the identity."""

    name, rank, local_rank, local_size, world_size = "local", 0, 0, 1, 1
    mirrored = False    # True: every rank holds (and restores, and saves) the variables itself

    def scope(self) -> AbstractContextManager:
        return contextlib.nullcontext()

    def tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        return tape

    def gradient_loss(self, loss_sum: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        """The loss to differentiate on this rank: the batch mean (the gradients are averaged, if at all)."""
        return loss_sum / rows

    def run_step(self, fn: Any, *args: Any) -> tf.Tensor:
        return fn(*args)

    def broadcast_variables(self, variables: list) -> None:
        """Give every rank rank 0's values of ``variables``."""

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float64)

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


class MultiWorkerTF(LocalTF):
    """``tf.distribute.MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (one replica per worker process)."""

    name, mirrored = "tf_multiworker", True

    def __init__(self) -> None:
        if "TF_CONFIG" not in os.environ:
            raise RuntimeError("train.backend=tf_multiworker needs TF_CONFIG; start it with run_training (one Spark "
                               "barrier task per worker builds it) rather than calling train_worker directly")
        config = json.loads(os.environ["TF_CONFIG"])
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        workers = config["cluster"]["worker"]
        self.rank, self.world_size = int(config["task"]["index"]), self.strategy.num_replicas_in_sync
        host = workers[self.rank].rsplit(":", 1)[0]
        same_host = [i for i, w in enumerate(workers) if w.rsplit(":", 1)[0] == host]
        self.local_rank, self.local_size = same_host.index(self.rank), len(same_host)
        self._sum = tf.function(lambda v: self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, self.strategy.run(tf.identity, args=(v,)), axis=None))

    def scope(self) -> AbstractContextManager:
        return self.strategy.scope()

    def gradient_loss(self, loss_sum: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        # TF sums the replicas' gradients: dividing by the global row count makes the sum their mean.
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, rows)
        return loss_sum / total

    def run_step(self, fn: Any, *args: Any) -> tf.Tensor:
        return self.strategy.experimental_local_results(self.strategy.run(fn, args=args))[0]

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return self._sum(tf.constant(np.asarray(values, np.float64))).numpy()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank, as pickled bytes summed with the other ranks' zeros."""
        data = np.frombuffer(pickle.dumps(obj), np.uint8).astype(np.float64) if self.rank == 0 else np.zeros(0)
        size = int(self.allreduce_sum(np.array([float(len(data))]))[0])
        full = self.allreduce_sum(data if self.rank == 0 else np.zeros(size))
        return pickle.loads(full.astype(np.uint8).tobytes())  # noqa: S301 - rank 0 of this job pickled it


def make_strategy(backend: str) -> LocalTF:
    """The strategy of ``train.backend`` (``local``, ``horovod`` or ``tf_multiworker``)."""
    if backend == "local":
        return LocalTF()
    if backend == "horovod":
        return HorovodTF()
    if backend == "tf_multiworker":
        return MultiWorkerTF()
    raise ValueError(f"train.backend {backend!r} cannot run TensorFlow; use one of {list(TF_BACKENDS)}")


def keras_model_spec(job: TrainJob) -> dict[str, Any]:
    """The Keras model spec of ``job``: ``job.model`` (a ``keras_cnn`` spec, or a torch ``cnn`` spec whose widths,
    hidden size and dropout carry over) or the default CNN; the input shape is the train feed's."""
    spec = dict(job.model or {"name": "cnn"})
    if job.config.model != "cnn" or spec.get("name") not in ("cnn", "keras_cnn"):
        raise ValueError(f"framework tensorflow has the Keras CNN only; set train.model=cnn (got {job.config.model!r}, "
                         f"spec {spec.get('name')!r})")
    if job.config.distill.enabled or job.config.transfer.enabled:
        raise ValueError("train.distill and train.transfer are torch features; set train.framework=torch for them")
    keep = {k: spec[k] for k in ("widths", "hidden", "dropout") if k in spec}
    return {"name": "keras_cnn", "image_shape": list(job.train.image_shape), "num_classes": job.num_classes, **keep}


def train_worker(job: TrainJob) -> TrainResult | None:
    """Train ``job`` in this process (any backend's rank); rank 0 returns the :class:`TrainResult`."""
    dist = make_strategy(job.config.backend)
    _configure_tf(job, dist)
    result = TrainingCore(job, KerasFramework(job, dist)).run()
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


class KerasFramework:
    """One TensorFlow process: the Keras model and optimizer under the strategy, the TF checkpoint manager."""

    def __init__(self, job: TrainJob, dist: LocalTF) -> None:
        self.job, self.cfg, self.dist = job, job.config, dist
        self.name, self.rank, self.world_size = dist.name, dist.rank, dist.world_size
        self.rank0 = dist.rank == 0
        self.spec = keras_model_spec(job)
        self.dir = f"{job.checkpoint_dir.removeprefix('file://').rstrip('/')}/{job.run_name}"
        with dist.scope():
            self.model = build_keras_model(self.spec)
            self.optimizer = self._optimizer()
            self.optimizer.build(self.model.trainable_variables)
        self.loop_var = tf.Variable("", dtype=tf.string, trainable=False)
        ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, loop=self.loop_var)
        self.manager = tf.train.CheckpointManager(ckpt, f"{self.dir}/{CKPT_DIR}", max_to_keep=2)
        self.sums = np.zeros(3)
        self.phase: Phase | None = None
        self.steps_per_epoch = 1
        self.next_lr = float(job.config.lr)
        self._train_step, self._eval_step = self._compile_steps()

    def _optimizer(self) -> keras.optimizers.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "sgd":
            opt = keras.optimizers.SGD(cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None)
        else:
            opt = keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay)
        return keras.optimizers.LossScaleOptimizer(opt) if keras.mixed_precision.global_policy().name == "mixed_float16" else opt

    def _compile_steps(self) -> tuple[Any, Any]:
        model, optimizer, dist = self.model, self.optimizer, self.dist
        # horovod's DistributedGradientTape keys gradients by ``source.ref()``, which tf.Variables have and
        # Keras 3 variables do not: differentiate with respect to the tf.Variables they wrap.
        sources = [_tf_variable(v) for v in model.trainable_variables]

        def replica_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                loss_sum = tf.reduce_sum(tf.cast(losses, tf.float32))
                scaled = optimizer.scale_loss(dist.gradient_loss(loss_sum, tf.cast(tf.shape(y)[0], tf.float32)))
            grads = dist.tape(tape).gradient(scaled, sources)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return _sums(loss_sum, logits, y)

        @tf.function(reduce_retracing=True)
        def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return dist.run_step(replica_step, x, y)

        @tf.function(reduce_retracing=True)
        def eval_step(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
            logits = model(x, training=False)
            loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            return _sums(tf.reduce_sum(tf.cast(loss, tf.float32) * w), logits, y, w)

        return train_step, eval_step

    # collectives
    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return self.dist.allreduce_sum(values)

    def broadcast_object(self, obj: Any) -> Any:
        return self.dist.broadcast_object(obj)

    # phases and epochs
    def latest_checkpoint(self) -> tuple[str, dict[str, Any]] | None:
        """Mirrored ranks each restore the chief's newest checkpoint; otherwise rank 0 restores and broadcasts."""
        latest = tf.train.latest_checkpoint(f"{self.dir}/{CKPT_DIR}") if self.dist.mirrored or self.rank0 else None
        if latest:
            self.manager.checkpoint.restore(latest).assert_existing_objects_matched()
        if not self.dist.mirrored:
            self.dist.broadcast_variables(self.model.variables + list(self.optimizer.variables))
            latest = self.dist.broadcast_object(latest)
            payload = self.dist.broadcast_object(self.loop_var.numpy().decode() if latest and self.rank0 else "")
        else:
            payload = self.loop_var.numpy().decode() if latest else ""
        return (latest, json.loads(payload)) if latest else None

    def start_phase(self, phase: Phase, steps_per_epoch: int, resume: dict[str, Any] | None) -> None:
        if phase.unfreeze is not None:
            raise ValueError(f"phase {phase.name!r} freezes layers, which the Keras loop does not; use train.framework=torch")
        self.phase, self.steps_per_epoch = phase, steps_per_epoch

    def start_epoch(self, epoch: int, step: int, resume: dict[str, Any] | None) -> None:
        """Dropout draws from the layers' seed generators, whose state the checkpoint holds: nothing to reseed."""
        self.sums = np.zeros(3)

    def open_batches(self, epoch: int) -> AbstractContextManager[Iterator[dict[str, np.ndarray]]]:
        return _nhwc_batches(self.job.train, self.rank, self.world_size, epoch)

    def train_step(self, batch: dict[str, np.ndarray], global_step: int) -> int:
        assert self.phase is not None
        phase, per_epoch = self.phase, self.steps_per_epoch
        step = global_step - phase.start * per_epoch
        peak = scaled_lr(phase.lr, self.world_size, self.cfg.lr_scaling)
        warmup, total = warmup_steps(phase, per_epoch), per_epoch * (phase.stop - phase.start)
        self.optimizer.learning_rate = peak * lr_factor(step, warmup, total)
        self.sums += self._train_step(tf.constant(batch["x"]), tf.constant(batch["y"])).numpy()
        self.next_lr = peak * lr_factor(step + 1, warmup, total)
        return len(batch["y"])

    def train_sums(self) -> np.ndarray:
        return self.sums.copy()

    def end_epoch(self) -> None:
        self.dist.broadcast_variables(self.model.non_trainable_variables)  # BatchNorm statistics of rank 0

    def evaluate(self, split: str) -> dict[str, float]:
        from dlspark.train.core import summarize

        spec = self.job.val if split == "val" else self.job.test
        sums = np.zeros(3)
        with _nhwc_batches(spec, self.rank, self.world_size, 0) as batches:
            for b in batches:
                w = b.get(WEIGHT, np.ones(len(b["y"]), np.float32))
                sums += self._eval_step(tf.constant(b["x"]), tf.constant(b["y"]), tf.constant(w, tf.float32)).numpy()
        return summarize(self.dist.allreduce_sum(sums))

    def learning_rate(self) -> float:
        """The next step's rate (as torch's ``scheduler.get_last_lr`` after a step)."""
        return self.next_lr

    def end_phase(self) -> None:
        """Nothing to carry: the Keras model stays built across phases."""

    # files: rank 0 writes; mirrored ranks all write (a collective), the others into a scratch folder they remove
    def save_checkpoint(self, payload: dict[str, Any], epoch: int, step: int, global_step: int) -> None:
        self.loop_var.assign(json.dumps(payload))
        if self.rank0:
            self.manager.save(checkpoint_number=global_step)
        elif self.dist.mirrored:
            self.manager.checkpoint.write(f"{self._scratch()}/ckpt")
            self._drop_scratch()

    def save_best(self, epoch: int, metric: float) -> None:
        if self.rank0 or self.dist.mirrored:
            folder = self.dir if self.rank0 else self._scratch()
            tf.io.gfile.makedirs(folder)
            self.model.save_weights(f"{folder}/{BEST_WEIGHTS}")
            self._drop_scratch()

    def finish(self) -> tuple[dict[str, float], str, dict[str, Any], str]:
        """Load the best weights (every rank reads rank 0's file, or gets them broadcast), evaluate the test split on
        all ranks; rank 0 exports the best model as a SavedModel from a plain (undistributed) copy."""
        best = f"{self.dir}/{BEST_WEIGHTS}"
        if (self.rank0 or self.dist.mirrored) and tf.io.gfile.exists(best):
            self.model.load_weights(best)
        if not self.dist.mirrored:
            self.dist.broadcast_variables(self.model.variables)
        export = f"{self.dir}/{SAVED_MODEL}"
        digest = weights_digest((str(i), w) for i, w in enumerate(self.model.get_weights()))
        test: dict[str, float] = {}
        if self.job.test is not None:
            m = self.evaluate("test")
            test = {"test_loss": m["loss"], "test_accuracy": m["accuracy"], "test_count": m["count"]}
        if self.rank0:
            plain = build_keras_model(self.spec)
            plain.set_weights(self.model.get_weights())
            plain.export(export, format="tf_saved_model", verbose=False)
        return test, export, self.spec, digest

    def _scratch(self) -> str:
        """Where a mirrored rank other than 0 writes its (identical) copy during a collective save."""
        return f"{self.dir}/.worker-{self.rank}"

    def _drop_scratch(self) -> None:
        if not self.rank0 and tf.io.gfile.exists(self._scratch()):
            tf.io.gfile.rmtree(self._scratch())


@contextlib.contextmanager
def _nhwc_batches(spec: Any, rank: int, world_size: int, epoch: int) -> Iterator[Iterator[dict[str, np.ndarray]]]:
    """The feeder's batches of ``spec`` with images NHWC (Keras's layout)."""
    from dlspark.feed import open_batches

    with open_batches(dataclasses.replace(spec, channels_last=True), rank=rank, world_size=world_size, epoch=epoch) as batches:
        yield batches


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
