"""What differs between a classic SparkSession (py4j, a JVM in this process) and a Spark Connect one.

Spark Connect (``SparkSession.builder.remote("sc://host:15002")``, what Databricks serverless and shared
clusters speak) has no ``SparkContext``, ``_jvm`` or RDDs. Everything here uses public DataFrame and
session APIs that both kinds answer, so the rest of dlspark asks these helpers instead of the JVM.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING, Iterator

from dlspark.config import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_MISSING_SOURCE = ("DATA_SOURCE_NOT_FOUND", "Failed to find data source", "ClassNotFoundException")


def is_connect(spark: "SparkSession") -> bool:
    """True for a Spark Connect session (no SparkContext, no py4j)."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # pyspark without the connect extra: every session is classic
        return False
    return isinstance(spark, ConnectSession)


def require_classic(spark: "SparkSession", feature: str, alternative: str) -> None:
    """Raise :class:`ConfigError` at start when ``feature`` needs the JVM in this process and ``spark`` is Connect."""
    if is_connect(spark):
        raise ConfigError(f"{feature} needs a classic SparkSession (py4j and the SparkContext in this process), "
                          f"which Spark Connect does not have: use {alternative}, or run without spark.remote")


def spark_master(spark: "SparkSession") -> str:
    """The master URL the session's driver runs with (asked through the runtime conf under Connect)."""
    if is_connect(spark):
        return str(spark.conf.get("spark.master", "") or "")
    return str(spark.sparkContext.master)


def session_id(spark: "SparkSession") -> str:
    """What files and artifacts are shipped to: the Connect session, or the classic application."""
    if is_connect(spark):
        return str(spark.session_id)  # type: ignore[attr-defined]  # a Connect session's property
    return str(spark.sparkContext.applicationId)


def runs_in_process(spark: "SparkSession") -> bool:
    """True when the driver's files are this process's files: a classic session, or a Connect server this process
    started (``remote("local[...]")``). A remote Connect server reads none of the client's local paths."""
    if not is_connect(spark):
        return True
    return os.environ.get("SPARK_LOCAL_REMOTE") == "1"  # set by pyspark when it starts the in-process server


def executors_share_files(spark: "SparkSession") -> bool:
    """True when executors read this process's local files: a ``local`` master in this process."""
    return runs_in_process(spark) and spark_master(spark).startswith("local")


def default_parallelism(spark: "SparkSession") -> int:
    """Task slots of the application: ``sc.defaultParallelism``; under Connect ``spark.default.parallelism`` when
    set, else :func:`measured_parallelism`."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    conf = spark.conf.get("spark.default.parallelism", None)
    return int(conf) if conf else measured_parallelism(spark)


def measured_parallelism(spark: "SparkSession") -> int:
    """The partitions a range with no partition count is split into: Spark sizes it by the default parallelism.
    One small job; it works on every kind of session."""
    from pyspark.sql import functions as F

    row = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p")).agg(F.max("p").alias("p")).first()
    return int(row["p"]) + 1 if row is not None and row["p"] is not None else 1


def data_source_available(spark: "SparkSession", fmt: str) -> bool:
    """True when the session's driver has a data source named ``fmt`` (e.g. ``delta``, ``kafka``).

    Probes with a read of a path that does not exist: a missing source fails with DATA_SOURCE_NOT_FOUND while a
    present one fails on the path or its options. No JVM access, so it answers the same over Spark Connect.
    """
    try:
        spark.read.format(fmt).load("/nonexistent/dlspark-probe").schema  # noqa: B018 - analysis runs the lookup
    except Exception as exc:  # noqa: BLE001 - the error's text is what tells the two cases apart
        return not any(marker in str(exc) for marker in _MISSING_SOURCE)
    return True


def set_log_level(spark: "SparkSession", level: str) -> None:
    """The driver's log level; a Connect server keeps its own (there is no SparkContext to ask)."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel(level)


def scala_binary_version(spark: "SparkSession") -> str:
    """Scala binary version of the session's Spark (``2.13``, ``2.12``), for Maven coordinates of connectors.

    Read off the ``scala-library`` jar when the driver runs from this Python's pyspark; otherwise what the Spark
    version is built with by default (2.13 from Spark 4, 2.12 for 3.x).
    """
    if runs_in_process(spark):
        found = scala_from_jars(_spark_jars_dir())
        if found:
            return found
    return default_scala(spark.version)


def default_scala(spark_version: str) -> str:
    """Scala of the default build of ``spark_version`` (pure)."""
    return "2.13" if int(spark_version.split(".")[0]) >= 4 else "2.12"


def scala_from_jars(jars_dir: str | None) -> str | None:
    """``2.13`` from ``<jars_dir>/scala-library-2.13.16.jar``; None when there is none (pure but for the listing)."""
    if not jars_dir or not os.path.isdir(jars_dir):
        return None
    for name in sorted(os.listdir(jars_dir)):
        match = re.fullmatch(r"scala-library-(\d+\.\d+)\.\d+\.jar", name)
        if match:
            return match.group(1)
    return None


def _spark_jars_dir() -> str | None:
    home = os.environ.get("SPARK_HOME")
    if not home:
        import pyspark

        home = os.path.dirname(pyspark.__file__)
    return os.path.join(home, "jars")


@contextlib.contextmanager
def job_group(spark: "SparkSession", group: str, description: str) -> Iterator[None]:
    """Jobs started in the block belong to ``group`` (cancelled with :func:`cancel_job_group`): a SparkContext
    job group on a classic session, an operation tag under Connect."""
    if is_connect(spark):
        spark.addTag(group)
        try:
            yield
        finally:
            spark.removeTag(group)
        return
    sc = spark.sparkContext
    sc.setJobGroup(group, description, interruptOnCancel=True)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]


def cancel_job_group(spark: "SparkSession", group: str) -> None:
    """Cancel the running jobs of ``group`` (interrupting their tasks)."""
    if is_connect(spark):
        spark.interruptTag(group)
    else:
        spark.sparkContext.cancelJobGroup(group)
