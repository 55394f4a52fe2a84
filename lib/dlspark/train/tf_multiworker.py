"""``train.backend: tf_multiworker``: TensorFlow's ``MultiWorkerMirroredStrategy`` on Spark barrier tasks.

Driver side, :func:`run_multiworker` starts ``train.num_workers`` tasks in one barrier stage (all start together or
none). Each task picks a free port, the tasks exchange ``host:port`` with ``BarrierTaskContext.allGather``, and
each builds its ``TF_CONFIG`` (cluster = every task's address in partition order, task index = its partition)
and runs ``train_worker`` in a fresh Python child process: TensorFlow reads ``TF_CONFIG`` once, when its runtime
starts, and Spark reuses its Python workers, so the strategy cannot live in the task process itself. The child
dies with its task (``PR_SET_PDEATHSIG``), streams its output into the executor log, and rank 0 hands its
:class:`TrainResult` back as a pickle. Needs a classic SparkSession (barrier RDD stages).
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from dlspark.train.job import TrainJob, TrainResult

_TAIL_LINES = 60


def run_multiworker(job: TrainJob, num_workers: int, spark: Any) -> TrainResult:
    """Train ``job`` on ``num_workers`` Spark barrier tasks; rank 0's result.

    Raises
    ------
    RuntimeError
        A worker exited non-zero; the message holds each failed worker's last lines.
    """
    from dlspark.spark.connect import require_classic

    require_classic(spark, "train.backend=tf_multiworker (Spark barrier tasks)", "train.backend=local or horovod")
    rows = (spark.sparkContext.parallelize(range(num_workers), num_workers).barrier()
            .mapPartitions(lambda _: _barrier_task(job)).collect())
    failed = [(rank, rc, tail) for rank, rc, _, tail in rows if rc != 0]
    if failed:
        detail = "\n".join(f"--- worker {rank} exited {rc}: ---\n{tail}" for rank, rc, tail in sorted(failed))
        raise RuntimeError(f"tf_multiworker training of {job.run_name!r} failed on {len(failed)} of {num_workers} "
                           f"workers\n{detail}")
    result = next((pickle.loads(blob) for rank, _, blob, _ in rows if rank == 0 and blob), None)  # noqa: S301 - our rank 0
    if not isinstance(result, TrainResult):
        raise RuntimeError(f"tf_multiworker: rank 0 of {job.run_name!r} returned no TrainResult")
    return result


def tf_config(addresses: list[str], index: int) -> dict[str, Any]:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of ``addresses`` (``host:port``, rank order)."""
    if not 0 <= index < len(addresses):
        raise ValueError(f"worker index {index} is outside the cluster of {len(addresses)} addresses")
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def _barrier_task(job: TrainJob) -> Iterator[tuple[int, int, bytes, str]]:
    from pyspark import BarrierTaskContext

    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    host = ctx.getTaskInfos()[rank].address.rsplit(":", 1)[0]
    addresses = ctx.allGather(f"{host}:{_free_port()}")
    with tempfile.TemporaryDirectory(prefix="dlspark-tfmw-") as tmp:
        job_file, result_file = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job_file.write_bytes(pickle.dumps(job))
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config(addresses, rank)), "PYTHONPATH": os.pathsep.join(sys.path)}
        rc, tail = _run_child([sys.executable, "-m", "dlspark.train.tf_multiworker", str(job_file), str(result_file)], env)
        blob = result_file.read_bytes() if result_file.exists() else b""
    yield rank, rc, blob, tail


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the task process dies (Linux), so no worker outlives its task."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def _run_child(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd``, echo its output to this task's stderr (the executor log); exit code and last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=_die_with_parent) as proc:   # noqa: PLW1509 - only prctl, no locks
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line)
    return proc.returncode, "".join(tail)


def main(argv: list[str]) -> int:
    """Child entry: ``python -m dlspark.train.tf_multiworker JOB_PICKLE RESULT_PICKLE`` (TF_CONFIG in the env)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = pickle.loads(Path(argv[0]).read_bytes())  # noqa: S301 - written by this job's task
    from dlspark.train.tf_loop import train_worker

    result = train_worker(job)
    if result is not None:
        Path(argv[1]).write_bytes(pickle.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
