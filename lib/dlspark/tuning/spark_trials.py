"""Run a batch of trials as one Spark job: one partition (so one task) per trial, on the executors.

The job runs in its own job group; when the driver is interrupted (Ctrl-C, SIGTERM turned into an exception)
the group is cancelled so no trial keeps training behind its back, and the interrupt is re-raised. A Spark job
that fails as a whole (a lost executor, a killed python worker) makes every trial of the batch a failed trial
carrying the Spark error, so the study can go on.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from dlspark.tuning.results import TrialOutcome
from dlspark.tuning.trial import TrialTask, run_trial

if TYPE_CHECKING:
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
_ERROR_CHARS = 4000


def task_slots(sc: "SparkContext") -> int:
    """Trials that can run at once: the default parallelism (executor cores) over ``spark.task.cpus``."""
    cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    return max(1, sc.defaultParallelism // max(cpus, 1))


def run_trials(spark: "SparkSession", tasks: Sequence[TrialTask], *, group: str) -> list[TrialOutcome]:
    """Run ``tasks`` as one Spark job, one task each; return their outcomes in ``tasks`` order.

    Raises
    ------
    BaseException
        Whatever interrupted the driver (KeyboardInterrupt, SystemExit), after cancelling the job group.
    """
    sc = spark.sparkContext
    numbers = [t.number for t in tasks]
    sc.setJobGroup(group, f"dlspark tune: trials {numbers}", interruptOnCancel=True)
    try:
        outcomes = sc.parallelize(list(tasks), len(tasks)).map(run_trial).collect()
    except (KeyboardInterrupt, SystemExit):
        log.warning("interrupted: cancelling Spark job group %s (trials %s)", group, numbers)
        sc.cancelJobGroup(group)
        raise
    except Exception as exc:  # noqa: BLE001 - a lost task fails its batch's trials, not the study
        message = f"Spark job of trials {numbers} failed: {exc}"[-_ERROR_CHARS:]
        log.error("%s", message.splitlines()[0])
        return [TrialOutcome(t.number, None, dict(t.params), error=message) for t in tasks]
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    by_number = {o.number: o for o in outcomes}
    return [by_number[n] for n in numbers]
