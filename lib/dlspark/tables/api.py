"""Spark-facing table I/O: write a DataFrame, read with version and fingerprint, exists, delete-where.

Each call checks its arguments, then hands the work to one engine: :mod:`~dlspark.tables.parquet`,
:mod:`~dlspark.tables.delta_rs` (Delta without jars) or :mod:`~dlspark.tables.spark_delta` (Spark's Delta
writer, when delta-spark's classes are loaded and ``delta_writer`` allows it). Files that Python workers
write themselves go through :class:`dlspark.tables.sink.TableSink` instead.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from dlspark.tables import delta_rs, parquet, spark_delta
from dlspark.tables.errors import TableError
from dlspark.tables.result import TableSnapshot, WriteResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

FORMATS = ("parquet", "delta")
MODES = ("append", "overwrite")
DELTA_WRITERS = ("auto", "spark", "delta-rs")


def write_table(df: "DataFrame", path: str, *, fmt: str, mode: str = "append",
                partition_by: Sequence[str] = (), delta_writer: str = "auto") -> WriteResult:
    """Write ``df`` to a Parquet directory or a Delta table at ``path``; the lineage of ``df`` runs once.

    Parameters
    ----------
    df : DataFrame
        Rows to write.
    path : str
        Absolute local path or URI (``file:/``, ``hdfs://``, ``s3a://``...).
    fmt : {"parquet", "delta"}
    mode : {"append", "overwrite"}
        ``overwrite`` replaces every row (Delta: a new version holding only the new files; the schema may
        change, the partitioning may not).
    partition_by : sequence of str
        Partition columns (with delta-rs: string, integral, boolean or date columns).
    delta_writer : {"auto", "spark", "delta-rs"}
        ``auto`` uses delta-spark when its classes are loaded, else delta-rs.

    Returns
    -------
    WriteResult
        For Delta, the committed version; an append of no rows to an existing table commits nothing and
        reports the version it read (a new table is still created, as version 0).

    Raises
    ------
    ValueError
        Bad ``fmt``, ``mode``, ``delta_writer``, ``partition_by`` or ``path``.
    TableConflictError
        Another writer committed first (Delta); nothing of this write is visible.
    TableError
        Schema or partitioning does not fit the existing table, or the commit failed.
    """
    check_choice("fmt", fmt, FORMATS)
    check_choice("mode", mode, MODES)
    check_choice("delta_writer", delta_writer, DELTA_WRITERS)
    cols = _check_partition_by(df, partition_by)
    uri = check_path(path)
    if fmt == "parquet":
        return parquet.write(df, uri, mode, cols)
    if spark_delta.available(df.sparkSession, delta_writer):
        return spark_delta.write(df, uri, mode, cols)
    return delta_rs.write(df, uri, mode, cols)


def read_table(spark: "SparkSession", path: str, *, fmt: str, version: int | None = None) -> TableSnapshot:
    """Read the table at ``path`` (Delta: at ``version``, default the latest).

    Returns
    -------
    TableSnapshot
        The DataFrame (Delta: columns in table-schema order, partition columns typed), the version read
        (None for Parquet) and the fingerprint of the files read.

    Raises
    ------
    ValueError
        Bad ``fmt``, or ``version`` given for Parquet.
    TableError
        No table at ``path``, or ``version`` does not exist (the message gives the latest).
    """
    check_choice("fmt", fmt, FORMATS)
    uri = check_path(path)
    if fmt == "delta":
        return delta_rs.read(spark, uri, version, with_spark_reader=spark_delta.available(spark, "auto"))
    if version is not None:
        raise ValueError(f"version={version} is only for fmt='delta'; Parquet directories have no versions")
    return parquet.read(spark, uri)


def table_exists(path: str, *, fmt: str) -> bool:
    """True when :func:`read_table` finds a table at ``path`` (Parquet: at least one data file)."""
    check_choice("fmt", fmt, FORMATS)
    uri = check_path(path)
    return delta_rs.exists(uri) if fmt == "delta" else parquet.exists(uri)


def delete_where(spark: "SparkSession", path: str, *, fmt: str, column: str, value: Any,
                 delta_writer: str = "auto") -> int:
    """Delete the rows whose ``column`` equals ``value`` (Delta: one transaction; Parquet: the files that hold
    such rows are rewritten without them). Returns the rows deleted; 0 when there is no table."""
    check_choice("fmt", fmt, FORMATS)
    uri = check_path(path)
    if not table_exists(uri, fmt=fmt):
        return 0
    df = read_table(spark, uri, fmt=fmt).df
    if column not in df.columns:
        raise TableError(f"cannot delete where {column} = {value!r}: {uri} has no column {column!r} "
                         f"(its columns: {df.columns})")
    if fmt == "delta":
        if spark_delta.available(spark, delta_writer):
            return spark_delta.delete_where(spark, uri, column, value)
        return delta_rs.delete_where(uri, column, value)
    from pyspark.sql import functions as F

    files = [r[0] for r in df.where(F.col(column) == F.lit(value)).select(F.input_file_name()).distinct().collect()]
    removed = parquet.delete_where(uri, files, column, value)
    spark.catalog.clearCache()  # cached scans of the rewritten files would be stale
    return removed


def check_choice(name: str, value: object, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(map(repr, accepted))}")


def check_path(path: str) -> str:
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"path must be a non-empty string, got {path!r}")
    if not urlparse(path).scheme and not path.startswith("/"):
        raise ValueError(f"path {path!r} is relative; pass an absolute path or a URI (file:/, hdfs://, s3a://)")
    return path.rstrip("/") or "/"


def _check_partition_by(df: "DataFrame", partition_by: Sequence[str]) -> list[str]:
    if isinstance(partition_by, str):
        raise TypeError(f"partition_by={partition_by!r} is a string; pass a list, e.g. [{partition_by!r}]")
    cols = list(partition_by)
    if missing := [c for c in cols if c not in df.columns]:
        raise ValueError(f"partition_by columns {missing} are not in the DataFrame's columns {df.columns}")
    if cols and len(set(cols)) == len(df.columns):
        raise ValueError(f"partition_by={cols} uses every column; leave at least one data column")
    return cols
