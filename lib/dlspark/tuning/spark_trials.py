"""Run a batch of trials as one Spark job: one partition (so one task) per trial, on the executors.

The job runs in its own job group; when the driver is interrupted (Ctrl-C, SIGTERM turned into an exception)
the group is cancelled so no trial keeps training behind its back, and the interrupt is re-raised. A Spark job
that fails as a whole (a lost executor, a killed python worker) makes every trial of the batch a failed trial
carrying the Spark error, so the study can go on.
"""
from __future__ import annotations

import logging
import pickle
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from dlspark.spark.connect import cancel_job_group, default_parallelism, job_group
from dlspark.tuning.results import TrialOutcome
from dlspark.tuning.trial import TrialTask, run_trial

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
_ERROR_CHARS = 4000
OUTCOME_DDL = "number long, outcome binary"


def task_slots(spark: "SparkSession") -> int:
    """Trials that can run at once: the default parallelism (executor cores) over ``spark.task.cpus``."""
    cpus = int(spark.conf.get("spark.task.cpus", "1") or "1")
    return max(1, default_parallelism(spark) // max(cpus, 1))


def trials_frame(spark: "SparkSession", tasks: Sequence[TrialTask],
                 trial: Callable[[TrialTask], TrialOutcome] = run_trial) -> "DataFrame":
    """One partition, so one Spark task, per trial; each runs ``trial`` and yields its pickled :class:`TrialOutcome`.

    A range with as many partitions as rows puts one row in each, and ``mapInArrow`` needs no RDD, so the same
    job runs over Spark Connect.
    """
    return (spark.range(0, len(tasks), 1, numPartitions=len(tasks))
            .mapInArrow(partial(_run_partition, tasks=tuple(tasks), trial=trial), OUTCOME_DDL))


def _run_partition(batches: "Iterator[pa.RecordBatch]", tasks: tuple[TrialTask, ...],
                   trial: Callable[[TrialTask], TrialOutcome]) -> "Iterator[pa.RecordBatch]":
    import pyarrow as pa

    for batch in batches:
        for index in batch.column("id").to_pylist():
            outcome = trial(tasks[index])
            yield pa.RecordBatch.from_pydict({"number": [outcome.number], "outcome": [pickle.dumps(outcome)]},
                                             schema=pa.schema([("number", pa.int64()), ("outcome", pa.binary())]))


def run_trials(spark: "SparkSession", tasks: Sequence[TrialTask], *, group: str,
               trial: Callable[[TrialTask], TrialOutcome] = run_trial) -> list[TrialOutcome]:
    """Run ``tasks`` as one Spark job, one task each, with ``trial``; return their outcomes in ``tasks`` order.

    Raises
    ------
    BaseException
        Whatever interrupted the driver (KeyboardInterrupt, SystemExit), after cancelling the job group.
    """
    numbers = [t.number for t in tasks]
    with job_group(spark, group, f"dlspark tune: trials {numbers}"):
        try:
            rows = trials_frame(spark, tasks, trial).collect()
        except (KeyboardInterrupt, SystemExit):
            log.warning("interrupted: cancelling Spark job group %s (trials %s)", group, numbers)
            cancel_job_group(spark, group)
            raise
        except Exception as exc:  # noqa: BLE001 - a lost task fails its batch's trials, not the study
            message = f"Spark job of trials {numbers} failed: {exc}"[-_ERROR_CHARS:]
            log.error("%s", message.splitlines()[0])
            return [TrialOutcome(t.number, None, dict(t.params), error=message) for t in tasks]
    by_number = {row["number"]: pickle.loads(row["outcome"]) for row in rows}  # noqa: S301 - our own tasks' results
    return [by_number[n] for n in numbers]
