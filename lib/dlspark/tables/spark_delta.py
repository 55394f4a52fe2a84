"""The delta-spark engine: Spark's own Delta writer and reader, where delta-spark's jars are on the classpath.

Not exercised by the test suite beyond its refusal without the jars (they cannot be fetched offline): the
rules it enforces before writing are delta-rs's (same partitioning; an append keeps the schema), so a table
behaves the same whichever engine wrote it.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from dlspark.tables import delta_log
from dlspark.tables.delta_rs import spark_schema_json
from dlspark.tables.errors import TableConflictError, TableError
from dlspark.tables.result import WriteResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_CONFLICT = re.compile(r"DELTA_CONCURRENT_|DELTA_METADATA_CHANGED|DELTA_PROTOCOL_CHANGED|Concurrent\w*Exception")


def available(spark: "SparkSession", delta_writer: str) -> bool:
    """Whether ``delta_writer`` ("auto" | "spark" | "delta-rs") means this engine on ``spark``."""
    from dlspark.spark.session import delta_spark_available

    if delta_writer == "delta-rs":
        return False
    found = delta_spark_available(spark)
    if delta_writer == "spark" and not found:
        raise TableError("delta_writer='spark' needs the delta-spark jars on the classpath "
                         "(spark.jars.packages=io.delta:delta-spark_2.13:<version>); or use delta_writer='delta-rs'")
    return found


def write(df: "DataFrame", uri: str, mode: str, partition_by: list[str]) -> WriteResult:
    base = delta_log.load_table(uri, missing_ok=True)
    if base is not None:
        delta_log.check_write_target(uri, base, spark_schema_json(df.schema), partition_by, mode)
    writer = df.write.format("delta").mode(mode).partitionBy(*partition_by)
    if mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    try:
        writer.save(uri)
    except Exception as err:  # py4j/pyspark wrap Delta's Java exceptions in several Python types
        if _CONFLICT.search(f"{type(err).__name__}: {err}"):
            raise TableConflictError(f"another writer committed to {uri} during this {mode}; rerun it") from err
        raise
    # The newest commit: this write's unless another writer committed in the meantime.
    last = df.sparkSession.sql(f"DESCRIBE HISTORY {_table(uri)} LIMIT 1").collect()[0]
    metrics = last["operationMetrics"] or {}
    return WriteResult(uri, "delta", mode, int(last["version"]), int(metrics.get("numFiles", 0)),
                       int(metrics.get("numOutputRows", 0)), "spark-delta")


def publish(spark: "SparkSession", uri: str, staged_root: str, spark_schema: Any, partition_by: list[str],
            has_files: bool) -> WriteResult:
    """Append the staged files by reading them and writing them with Spark's Delta writer."""
    df = spark.read.schema(spark_schema).parquet(staged_root) if has_files else spark.createDataFrame([], spark_schema)
    return write(df, uri, "append", partition_by)


def delete_where(spark: "SparkSession", uri: str, column: str, value: Any) -> int:
    """``DELETE FROM`` the rows whose ``column`` equals ``value``; returns the rows deleted."""
    from pyspark.sql import functions as F

    condition = F.col(f"`{column.replace('`', '``')}`") == F.lit(value)
    before = spark.read.format("delta").load(uri).where(condition).count()
    from delta.tables import DeltaTable  # type: ignore[import-not-found]  # only with delta-spark

    DeltaTable.forPath(spark, uri).delete(condition)
    return int(before)


def _table(uri: str) -> str:
    return f"delta.`{uri.replace('`', '``')}`"
