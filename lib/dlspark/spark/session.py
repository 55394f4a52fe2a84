"""Build the one SparkSession of a job from :class:`SparkConfig`."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Iterator

from dlspark.config import ConfigError, SparkConfig
from dlspark.spark.connect import data_source_available, set_log_level, spark_master

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def spark_conf_pairs(cfg: SparkConfig) -> dict[str, str]:
    """All ``spark.*`` settings implied by ``cfg`` (pure: testable without a JVM)."""
    conf = {
        "spark.app.name": cfg.app_name,
        "spark.master": cfg.master,
        "spark.submit.deployMode": cfg.deploy_mode,
        "spark.driver.memory": cfg.driver_memory,
        "spark.executor.memory": cfg.executor_memory,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_max_records_per_batch),
        "spark.sql.files.openCostInBytes": str(cfg.files_open_cost_bytes),
        "spark.ui.enabled": str(cfg.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",  # progress comes from our log lines, per stage
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.adaptive.enabled": "true",
    }
    if cfg.executor_cores:
        conf["spark.executor.cores"] = str(cfg.executor_cores)
    if cfg.executor_instances:
        conf["spark.executor.instances"] = str(cfg.executor_instances)
    if cfg.executor_gpus:
        conf["spark.executor.resource.gpu.amount"] = str(cfg.executor_gpus)
        conf["spark.task.resource.gpu.amount"] = str(cfg.task_gpus or 1.0 / max(cfg.executor_cores or 1, 1))
        if cfg.gpu_discovery_script:
            conf["spark.executor.resource.gpu.discoveryScript"] = cfg.gpu_discovery_script
    python = executor_python(cfg)
    conf["spark.pyspark.python"] = python
    if cfg.deploy_mode == "client":
        conf["spark.pyspark.driver.python"] = sys.executable
    conf.update(cfg.conf)
    return conf


def executor_python(cfg: SparkConfig) -> str:
    """The interpreter executors run: config, else ``PYSPARK_PYTHON``, else this one."""
    return cfg.python or os.environ.get("PYSPARK_PYTHON") or sys.executable


def connect_conf_pairs(cfg: SparkConfig) -> dict[str, str]:
    """The settings a session over Spark Connect is built with (pure).

    An in-process server (``remote: local[N]``) starts with all of them. A remote server was started with its
    own master, memory and UI settings, so only session (``spark.sql.*``) settings and ``spark.conf`` are sent.
    """
    pairs = spark_conf_pairs(cfg)
    if cfg.remote and cfg.remote.startswith("local"):
        pairs.pop("spark.master")
        return pairs
    return {k: v for k, v in pairs.items() if k.startswith("spark.sql.") or k in cfg.conf}


def build_spark_session(cfg: SparkConfig) -> "SparkSession":
    """Create (or reuse) the SparkSession described by ``cfg``: classic, or Spark Connect when ``spark.remote`` is set.

    Sets ``PYSPARK_PYTHON`` so executors use the project's interpreter, enables Arrow, and adds the
    Delta extensions when delta-spark's classes are on the classpath (checked after start-up).
    """
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = executor_python(cfg)
    if cfg.deploy_mode == "client":
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cfg.remote:
        return _build_connect_session(cfg)
    builder = SparkSession.builder
    for key, value in spark_conf_pairs(cfg).items():
        builder = builder.config(key, value)
    if cfg.delta_writer != "delta-rs" and _delta_jars_listed(cfg):
        builder = builder.config("spark.sql.extensions", DELTA_EXTENSION)
        builder = builder.config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
    spark = builder.getOrCreate()
    set_log_level(spark, "WARN")
    log.info("spark session: master=%s app=%s version=%s", cfg.master, cfg.app_name, spark.version)
    return spark


def _build_connect_session(cfg: SparkConfig) -> "SparkSession":
    from pyspark.sql import SparkSession

    try:
        import pyspark.sql.connect.session  # noqa: F401 - needs pyspark >= 3.4 with grpcio (the connect extra)
    except ImportError as exc:
        raise ConfigError(f"spark.remote is {cfg.remote!r} but the Spark Connect client cannot be imported ({exc}): "
                          "pip install 'pyspark[connect]>=4' (make setup STACK=modern), or set spark.remote: null") from exc
    builder = SparkSession.builder.remote(str(cfg.remote))
    for key, value in connect_conf_pairs(cfg).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    log.info("spark connect session: remote=%s master=%s version=%s", cfg.remote, spark_master(spark), spark.version)
    return spark


@contextlib.contextmanager
def session_conf(spark: "SparkSession", values: dict[str, str]) -> "Iterator[None]":
    """Set session confs for the duration of the block (session-wide: other threads see them too)."""
    old: dict[str, str | None] = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, previous in old.items():
            if previous is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, previous)


def delta_spark_available(spark: "SparkSession") -> bool:
    """True when the driver has delta-spark's data source (the native Delta writer can be used)."""
    return data_source_available(spark, "delta")


def _delta_jars_listed(cfg: SparkConfig) -> bool:
    jars = ",".join(cfg.conf.get(k, "") for k in ("spark.jars", "spark.jars.packages"))
    return "delta" in jars or os.environ.get("DLSPARK_DELTA_JARS") == "1"
