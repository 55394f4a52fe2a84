"""``run_training``: run ``train_worker`` under the configured backend; driver side (needs Spark for the
distributed backends). Switching backends is a config change only: every backend runs the same function.

- ``local``: in this process.
- ``horovod``: ``horovod.spark.run(train_worker, args=(job,), num_proc=train.num_workers)``, one Spark task
  per rank, Gloo on CPU, NCCL on GPU (whatever Horovod was built with).
- ``tf_multiworker`` (TensorFlow): ``MultiWorkerMirroredStrategy``, one Spark barrier task per worker with
  ``TF_CONFIG`` from the tasks' addresses (``dlspark.train.tf_multiworker``).
- ``torch_distributor``: ``TorchDistributor(num_processes, local_mode, use_gpu).run(train_worker, job)``;
  ``local_mode`` is True when the Spark master is ``local[...]`` (processes on the driver), else the
  processes run in Spark tasks on the executors.

A failed run raises :class:`TrainingFailed` carrying the tail of the workers' output.
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
from dataclasses import replace
from typing import Any, Callable

import torch

from dlspark.config import TrainConfig
from dlspark.train.job import TrainJob, TrainResult

logger = logging.getLogger(__name__)
BACKENDS = ("local", "horovod", "torch_distributor", "tf_multiworker")
_TAIL = 6000


class TrainingFailed(RuntimeError):
    """A training process failed; the message ends with the tail of the workers' output."""


def require_supported_session(spark: Any, config: TrainConfig) -> None:
    """Fail before any work when ``config`` needs what a Spark Connect session lacks, naming the alternative."""
    from dlspark.spark.connect import require_classic

    if config.backend == "horovod":
        require_classic(spark, "train.backend=horovod (horovod.spark.run)", "train.backend=torch_distributor")
    if config.backend == "tf_multiworker":
        require_classic(spark, "train.backend=tf_multiworker (Spark barrier tasks)", "train.backend=local")
    if config.feed.feeder == "petastorm":
        require_classic(spark, "train.feed.feeder=petastorm (petastorm's make_spark_converter)", "train.feed.feeder=arrow")


def run_training(job: TrainJob, backend: str | None = None, *, spark: Any = None) -> TrainResult:
    """Train ``job`` with ``backend`` (default ``job.config.backend``) and return rank 0's result.

    Raises
    ------
    ValueError
        Unknown backend, or a distributed backend without a SparkSession.
    TrainingFailed
        A worker failed; the message holds the end of its output.
    """
    backend = backend or job.config.backend
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is unknown; use one of {list(BACKENDS)}")
    job = replace(job, config=replace(job.config, backend=backend))  # type: ignore[arg-type]  # checked against BACKENDS
    worker = _worker_fn(job)
    if backend == "local":
        return worker(job)
    if spark is None:
        raise ValueError(f"backend {backend!r} runs on Spark: pass spark=<SparkSession>, or use backend 'local'")
    n = job.config.num_workers
    logger.info("training %s with %s on %d processes", job.run_name, backend, n)
    if backend == "tf_multiworker":
        result = _run_tf_multiworker(job, n, spark)
    elif backend == "horovod":
        result = _run_horovod(worker, job, n)
    else:
        result = _run_distributor(worker, job, n, spark)
    if not isinstance(result, TrainResult):
        raise TrainingFailed(f"{backend}: rank 0 returned {type(result).__name__}, expected TrainResult")
    return result


def _worker_fn(job: TrainJob) -> Callable[[TrainJob], Any]:
    """The training function for ``train.framework`` (torch here; TensorFlow in ``dlspark.train.tf_loop``)."""
    if job.config.framework == "tensorflow":
        from dlspark.train import tf_loop

        return tf_loop.train_worker
    from dlspark.train.loop import train_worker

    return train_worker


class _Tee(io.TextIOBase):
    """Forwards worker output to the driver's stream and keeps the last ``_TAIL`` characters."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.tail = stream, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.tail = (self.tail + text)[-_TAIL:]
        return len(text)


def _run_horovod(worker: Callable, job: TrainJob, num_proc: int) -> Any:
    import horovod.spark

    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    try:
        results = horovod.spark.run(worker, args=(job,), num_proc=num_proc, stdout=out, stderr=err, verbose=1)
    except Exception as exc:
        raise TrainingFailed(f"horovod training of {job.run_name!r} failed: {exc}\n--- worker output (tail) ---\n"
                             f"{out.tail}\n{err.tail}") from exc
    return results[0]


def _run_tf_multiworker(job: TrainJob, num_proc: int, spark: Any) -> Any:
    from dlspark.train.tf_multiworker import run_multiworker

    try:
        return run_multiworker(job, num_proc, spark)
    except Exception as exc:
        raise TrainingFailed(str(exc)) from exc


def _run_distributor(worker: Callable, job: TrainJob, num_proc: int, spark: Any) -> Any:
    from pyspark.ml.torch.distributor import TorchDistributor

    from dlspark.spark.connect import spark_master

    local_mode = spark_master(spark).startswith("local")
    use_gpu = job.config.device == "cuda" or (job.config.device == "auto" and torch.cuda.is_available())
    distributor = TorchDistributor(num_processes=num_proc, local_mode=local_mode, use_gpu=use_gpu)
    out = _Tee(sys.stdout)  # TorchDistributor echoes the torchrun output to sys.stdout; keep its tail
    _remove_stale_result(job)
    try:
        with contextlib.redirect_stdout(out):
            result = distributor.run(_report_rank0, worker, job)
    except Exception as exc:
        raise TrainingFailed(f"torch_distributor training of {job.run_name!r} failed: {exc}\n"
                             f"--- worker output (tail) ---\n{out.tail}") from exc
    # pyspark 3.5's local mode has every process write its return value to the same file, so a rank > 0
    # (which returns None) can win the race: take rank 0's result from the file it wrote instead.
    return result if result is not None else _read_rank0(job)


def _rank0_result_path(job: TrainJob) -> str:
    from dlspark.train.checkpoint import CheckpointStore

    return f"{CheckpointStore(job.checkpoint_dir, job.run_name).uri}/rank0-result.pkl"


def _report_rank0(worker: Callable[[TrainJob], Any], job: TrainJob) -> Any:
    """Run ``worker``; rank 0 (the one that returns a result) also saves it beside the checkpoints."""
    import pickle

    from dlspark.filesystem import open_file

    result = worker(job)
    if result is not None:
        with open_file(_rank0_result_path(job), "wb") as handle:
            pickle.dump(result, handle)
    return result


def _remove_stale_result(job: TrainJob) -> None:
    from dlspark.filesystem import remove

    remove(_rank0_result_path(job))


def _read_rank0(job: TrainJob) -> Any:
    import pickle

    from dlspark.filesystem import open_file

    path = _rank0_result_path(job)
    try:
        with open_file(path, "rb") as handle:
            return pickle.load(handle)  # noqa: S301 - written by this job's own rank 0
    except FileNotFoundError:
        return None
