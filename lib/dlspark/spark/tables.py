"""Table I/O for Spark DataFrames: Parquet directories and Delta Lake tables, with or without delta-spark.

Delta writes use Spark's native writer when delta-spark's classes are loaded (``delta_writer="spark"``).
Otherwise (``"delta-rs"``) executors write Parquet into a staging directory inside the table, the driver
moves the files to ``<table>/<col>=<val>/part-<uuid>.parquet`` and commits them as ONE Delta transaction
with the ``deltalake`` package, against the table version it read before writing. With delta-rs:

* an overwrite conflicts with any commit made after its snapshot (it must replace exactly what it read);
* an append conflicts with a concurrent overwrite (delta-rs's conflict checker);
* concurrent appends both succeed (blind appends commute; valid per the Delta protocol).

A conflict raises :class:`TableConflictError` after the uncommitted files were deleted: rerun the write.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from dlspark import delta_log
from dlspark.delta_log import TableConflictError, TableError
from dlspark.spark.session import session_conf

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["TableConflictError", "TableError", "TableSnapshot", "WriteResult", "new_staging_uri", "publish_staged_files",
           "read_table", "table_exists", "write_table"]

log = logging.getLogger(__name__)

FORMATS = ("parquet", "delta")
MODES = ("append", "overwrite")
DELTA_WRITERS = ("auto", "spark", "delta-rs")
TIMESTAMP_CONF = "spark.sql.parquet.outputTimestampType"
_SPARK_DELTA_CONFLICT = re.compile(
    r"DELTA_CONCURRENT_|DELTA_METADATA_CHANGED|DELTA_PROTOCOL_CHANGED|Concurrent\w*Exception")


@dataclass(frozen=True)
class TableSnapshot:
    """What :func:`read_table` read: the DataFrame plus the identity of the data behind it."""

    df: DataFrame
    path: str
    format: str  # "parquet" | "delta"
    version: int | None  # Delta version read; None for Parquet
    fingerprint: str  # hash of the (relative name, size) of the files read


@dataclass(frozen=True)
class WriteResult:
    """What :func:`write_table` wrote; ``files`` and ``rows`` count this write's new files only."""

    path: str
    format: str
    mode: str
    version: int | None
    files: int
    rows: int
    writer: str  # "spark-parquet" | "spark-delta" | "delta-rs"


def write_table(df: DataFrame, path: str, *, fmt: str, mode: str = "append",
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
    _check_choice("fmt", fmt, FORMATS)
    _check_choice("mode", mode, MODES)
    _check_choice("delta_writer", delta_writer, DELTA_WRITERS)
    cols = _check_partition_by(df, partition_by)
    uri = _check_path(path)
    if fmt == "parquet":
        return _write_parquet(df, uri, mode, cols)
    if _use_spark_delta(df.sparkSession, delta_writer):
        return _write_spark_delta(df, uri, mode, cols)
    return _write_delta_rs(df, uri, mode, cols)


def read_table(spark: SparkSession, path: str, *, fmt: str, version: int | None = None) -> TableSnapshot:
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
    _check_choice("fmt", fmt, FORMATS)
    uri = _check_path(path)
    if fmt == "delta":
        return _read_delta(spark, uri, version)
    if version is not None:
        raise ValueError(f"version={version} is only for fmt='delta'; Parquet directories have no versions")
    return _read_parquet(spark, uri)


def table_exists(spark: SparkSession, path: str, *, fmt: str) -> bool:
    """True when :func:`read_table` finds a table at ``path`` (Parquet: at least one data file)."""
    _check_choice("fmt", fmt, FORMATS)
    uri = _check_path(path)
    if fmt == "delta":
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(delta_log.delta_rs_uri(uri))
    fs, root = _filesystem(uri)
    return fs.exists(root) and bool(delta_log.data_files(fs, root))


# ---- arguments and locations ----------------------------------------------------------------------------

def _check_choice(name: str, value: object, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(map(repr, accepted))}")


def _check_partition_by(df: DataFrame, partition_by: Sequence[str]) -> list[str]:
    if isinstance(partition_by, str):
        raise TypeError(f"partition_by={partition_by!r} is a string; pass a list, e.g. [{partition_by!r}]")
    cols = list(partition_by)
    if missing := [c for c in cols if c not in df.columns]:
        raise ValueError(f"partition_by columns {missing} are not in the DataFrame's columns {df.columns}")
    if cols and len(set(cols)) == len(df.columns):
        raise ValueError(f"partition_by={cols} uses every column; leave at least one data column")
    return cols


def _check_path(path: str) -> str:
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"path must be a non-empty string, got {path!r}")
    if not urlparse(path).scheme and not path.startswith("/"):
        raise ValueError(f"path {path!r} is relative; pass an absolute path or a URI (file:/, hdfs://, s3a://)")
    return path.rstrip("/") or "/"


def _filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    import fsspec.core

    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except ImportError as err:
        raise TableError(f"no fsspec filesystem for {uri!r} ({err}); install its fsspec backend") from err
    return fs, root.rstrip("/")


def _use_spark_delta(spark: SparkSession, delta_writer: str) -> bool:
    from dlspark.spark.session import delta_spark_available

    if delta_writer == "delta-rs":
        return False
    available = delta_spark_available(spark)
    if delta_writer == "spark" and not available:
        raise TableError("delta_writer='spark' needs the delta-spark jars on the classpath "
                         "(spark.jars.packages=io.delta:delta-spark_2.13:<version>); or use delta_writer='delta-rs'")
    return available


# ---- Parquet --------------------------------------------------------------------------------------------

def _write_parquet(df: DataFrame, uri: str, mode: str, partition_by: list[str]) -> WriteResult:
    fs, root = _filesystem(uri)
    before = set(delta_log.data_files(fs, root)) if mode == "append" and fs.exists(root) else set()
    df.write.mode(mode).partitionBy(*partition_by).parquet(uri)
    new = [p for p in delta_log.data_files(fs, root) if p not in before]  # Spark's file names are unique per job
    rows = sum(delta_log.read_footer(fs, p).num_rows for p in new)
    log.info("wrote %d rows in %d parquet files to %s (%s)", rows, len(new), uri, mode)
    return WriteResult(uri, "parquet", mode, None, len(new), rows, "spark-parquet")


def _read_parquet(spark: SparkSession, uri: str) -> TableSnapshot:
    fs, root = _filesystem(uri)
    files = delta_log.data_files(fs, root) if fs.exists(root) else {}
    if not files:
        raise TableError(f"no Parquet table at {uri}: it has not been written yet "
                         "(write it with write_table(..., fmt='parquet') first)")
    print_ = delta_log.fingerprint((p[len(root) + 1:], size) for p, size in files.items())
    return TableSnapshot(spark.read.parquet(uri), uri, "parquet", None, print_)


# ---- Delta via delta-spark (needs its jars; not exercised by the test suite without them) ---------------

def _write_spark_delta(df: DataFrame, uri: str, mode: str, partition_by: list[str]) -> WriteResult:
    base = delta_log.load_table(uri, missing_ok=True)
    if base is not None:  # the same rules as delta-rs: same partitioning; append keeps the schema
        delta_log.check_write_target(uri, base, _delta_schema(df), partition_by, mode)
    writer = df.write.format("delta").mode(mode).partitionBy(*partition_by)
    if mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    try:
        writer.save(uri)
    except Exception as err:  # py4j/pyspark wrap Delta's Java exceptions in several Python types
        if _SPARK_DELTA_CONFLICT.search(f"{type(err).__name__}: {err}"):
            raise TableConflictError(f"another writer committed to {uri} during this {mode}; rerun it") from err
        raise
    # The newest commit: this write's unless another writer committed in the meantime.
    last = df.sparkSession.sql(f"DESCRIBE HISTORY delta.`{uri.replace('`', '``')}` LIMIT 1").collect()[0]
    metrics = last["operationMetrics"] or {}
    return WriteResult(uri, "delta", mode, int(last["version"]), int(metrics.get("numFiles", 0)),
                       int(metrics.get("numOutputRows", 0)), "spark-delta")


# ---- Delta via delta-rs ---------------------------------------------------------------------------------

def _write_delta_rs(df: DataFrame, uri: str, mode: str, partition_by: list[str]) -> WriteResult:
    schema = _delta_schema(df)
    _check_partition_types(schema, partition_by)
    base = delta_log.load_table(uri, missing_ok=True)  # the snapshot this write commits against
    if base is not None:
        delta_log.check_write_target(uri, base, schema, partition_by, mode)
    actions, moved = _stage(df, uri, schema, partition_by)
    return _commit_delta_rs(uri, base, actions, moved, schema, mode, partition_by)


def _commit_delta_rs(uri: str, base: Any, actions: list, moved: list[str], schema: dict, mode: str,
                     partition_by: list[str]) -> WriteResult:
    fs, _ = _filesystem(uri)
    try:
        write_id = delta_log.commit(uri, base, actions, schema, mode, partition_by)
    except TableError:
        delta_log.remove_paths(fs, moved)  # a refused commit wrote no log entry: its files are garbage
        raise
    except BaseException:  # outcome unknown: an orphan file is harmless, a deleted committed one is not
        log.warning("commit to %s failed; %d new files may be left unreferenced", uri, len(moved))
        raise
    version = delta_log.committed_version(uri, base, write_id)
    rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
    if write_id is None:
        log.info("append of no rows to %s: nothing committed, table stays at version %d", uri, version)
    else:
        log.info("committed %d rows in %d files to %s as version %d (%s)", rows, len(actions), uri, version, mode)
    return WriteResult(uri, "delta", mode, version, len(actions), rows, "delta-rs")


def _delta_schema(df: DataFrame) -> dict:
    return delta_log.normalize_schema(json.loads(df.schema.json()))


def _check_partition_types(schema: dict, partition_by: list[str]) -> None:
    types = {f["name"]: delta_log.type_name(f["type"]) for f in schema["fields"]}
    if bad := {c: types[c] for c in partition_by if types[c] not in delta_log.PARTITION_TYPES}:
        raise ValueError(f"cannot partition a delta-rs table by {bad}; partition columns must be one of "
                         f"{sorted(delta_log.PARTITION_TYPES)} (derive e.g. a date or string column first)")


def _stage(df: DataFrame, uri: str, schema: dict, partition_by: list[str]) -> tuple[list, list[str]]:
    """Write ``df`` as Parquet into a staging dir, move the files into the table: (AddActions, moved paths)."""
    fs, root = _filesystem(uri)
    staging = f"_dlspark_staging-{uuid.uuid4().hex}"  # "_" prefix: hidden from readers of the directory
    moved: list[str] = []
    try:
        _spark_write_parquet(df, f"{uri}/{staging}", partition_by)
        return delta_log.publish_staged(fs, root, f"{root}/{staging}", schema, partition_by, moved), moved
    except BaseException:
        delta_log.remove_paths(fs, moved)
        raise
    finally:
        delta_log.remove_paths(fs, [f"{root}/{staging}"])


def _spark_write_parquet(df: DataFrame, uri: str, partition_by: list[str]) -> None:
    # Spark's default INT96 timestamps are not what Delta readers expect: write INT64 microseconds (UTC).
    with session_conf(df.sparkSession, {TIMESTAMP_CONF: "TIMESTAMP_MICROS"}):
        df.write.mode("errorifexists").partitionBy(*partition_by).parquet(uri)


def _read_delta(spark: SparkSession, uri: str, version: int | None) -> TableSnapshot:
    from dlspark.spark.session import delta_spark_available

    table = delta_log.load_table(uri, version)
    files = delta_log.add_files(table)
    if delta_spark_available(spark):
        df = spark.read.format("delta").option("versionAsOf", table.version()).load(uri)
    else:
        delta_log.check_readable(uri, table)
        df = _read_delta_files(spark, uri, table, files)
    print_ = delta_log.fingerprint((f["path"], int(f["size_bytes"])) for f in files)
    return TableSnapshot(df, uri, "delta", table.version(), print_)


def _read_delta_files(spark: SparkSession, uri: str, table: Any, files: list[dict]) -> DataFrame:
    """Read a snapshot's files with Spark's Parquet reader, partition columns added as typed literals."""
    from pyspark.sql import types as T

    schema = T.StructType.fromJson(json.loads(table.schema().to_json()))
    part_cols = list(table.metadata().partition_columns)
    data_schema = T.StructType([f for f in schema.fields if f.name not in part_cols])
    groups: dict[tuple, list[str]] = {}
    for f in files:
        key = tuple(f.get(f"partition.{c}") for c in part_cols)
        groups.setdefault(key, []).append(_file_uri(uri, f["path"]))
    if not groups:
        return spark.createDataFrame([], schema)
    parts = [_with_partition_values(spark.read.schema(data_schema).parquet(*paths), schema, dict(zip(part_cols, key)))
             for key, paths in groups.items()]
    return reduce(lambda a, b: a.union(b), parts)


def _with_partition_values(df: DataFrame, schema: Any, values: dict[str, Any]) -> DataFrame:
    from pyspark.sql import functions as F

    return df.select(*[F.lit(values[f.name]).cast(f.dataType).alias(f.name) if f.name in values else df[f.name]
                       for f in schema.fields])


def _file_uri(uri: str, path: str) -> str:
    if urlparse(path).scheme or path.startswith("/"):  # the protocol allows absolute paths
        return path
    return f"{uri}/{path}"


# ---- Files staged by Python workers (dlspark.ingest.staged) ---------------------------------------------

def new_staging_uri(table_uri: str) -> str:
    """A fresh staging folder inside the table (``_``-prefixed: invisible to readers, same filesystem)."""
    return f"{_check_path(table_uri).rstrip('/')}/_dlspark_staging-{uuid.uuid4().hex}"


def publish_staged_files(spark: SparkSession, staging: str, table_uri: str, *, files: Sequence[str], fmt: str,
                         schema: Any, partition_by: Sequence[str], delta_writer: str = "auto") -> WriteResult:
    """Append the staged Parquet ``files`` (under ``staging``, laid out ``<col>=<value>/``) to the table.

    Files in ``staging`` that are not listed (left by failed task attempts) are not published. Parquet: the
    files are moved into the table's partition folders. Delta: committed as one transaction (delta-rs), or
    read and written by Spark's Delta writer when that is the writer in use. ``schema`` is the table's
    Spark ``StructType``, partition columns included. The staging folder is removed in every case.
    """
    _check_choice("fmt", fmt, FORMATS)
    uri, cols = _check_path(table_uri), list(partition_by)
    fs, root = _filesystem(uri)
    _, staged_root = _filesystem(staging)
    try:
        keep = {_filesystem(f)[1] for f in files}
        delta_log.remove_paths(fs, [p for p in delta_log.data_files(fs, staged_root) if p not in keep])
        if fmt == "parquet":
            return _publish_parquet(fs, uri, root, staged_root, cols)
        if _use_spark_delta(spark, delta_writer):
            df = spark.read.schema(schema).parquet(staging) if keep else spark.createDataFrame([], schema)
            return _write_spark_delta(df, uri, "append", cols)
        return _publish_delta_rs(uri, fs, root, staged_root, delta_log.normalize_schema(json.loads(schema.json())), cols)
    finally:
        delta_log.remove_paths(fs, [staged_root])


def _publish_parquet(fs: AbstractFileSystem, uri: str, root: str, staged_root: str, partition_by: list[str]) -> WriteResult:
    _check_same_columns(fs, uri, root, staged_root)
    moved: list[str] = []
    rows = 0
    for path in sorted(delta_log.data_files(fs, staged_root)):
        rel_dir = path[len(staged_root) + 1:].rpartition("/")[0]
        target = f"{root}/{rel_dir + '/' if rel_dir else ''}part-{uuid.uuid4()}.c000.snappy.parquet"
        rows += delta_log.read_footer(fs, path).num_rows
        fs.makedirs(target.rpartition("/")[0], exist_ok=True)
        fs.mv(path, target)
        moved.append(target)
    log.info("published %d rows in %d parquet files to %s", rows, len(moved), uri)
    return WriteResult(uri, "parquet", "append", None, len(moved), rows, "python-parquet")


def _check_same_columns(fs: AbstractFileSystem, uri: str, root: str, staged_root: str) -> None:
    """A Parquet table has no log to hold its schema: files with other columns would be appended silently
    and readers would see one file's schema. Compare the staged files with one file already in the table."""
    staged = next(iter(sorted(delta_log.data_files(fs, staged_root))), None)
    existing = _first_data_file(fs, root)
    if staged is None or existing is None:
        return
    new, old = (delta_log.read_footer(fs, p).schema.to_arrow_schema() for p in (staged, existing))
    if [(f.name, f.type) for f in new] != [(f.name, f.type) for f in old]:
        raise TableError(
            f"the Parquet table {uri} has columns {old.names} but this run writes {new.names} (types included): "
            "write to a new output path, or re-ingest into an empty one, after a change of the table's columns")


def _first_data_file(fs: AbstractFileSystem, root: str) -> str | None:
    """One data file of the table (stops at the first), or None."""
    for folder, dirs, names in fs.walk(root):
        rel = folder[len(root):].strip("/")
        dirs[:] = sorted(d for d in dirs if not delta_log.is_hidden(f"{rel}/{d}".strip("/")))
        for name in sorted(names):
            if name.endswith(".parquet") and not delta_log.is_hidden(f"{rel}/{name}".strip("/")):
                return f"{folder.rstrip('/')}/{name}"
    return None


def _publish_delta_rs(uri: str, fs: AbstractFileSystem, root: str, staged_root: str, schema: dict,
                      partition_by: list[str]) -> WriteResult:
    _check_partition_types(schema, partition_by)
    base = delta_log.load_table(uri, missing_ok=True)
    if base is not None:
        delta_log.check_write_target(uri, base, schema, partition_by, "append")
    moved: list[str] = []
    try:
        actions = delta_log.publish_staged(fs, root, staged_root, schema, partition_by, moved)
    except BaseException:
        delta_log.remove_paths(fs, moved)
        raise
    return _commit_delta_rs(uri, base, actions, moved, schema, "append", partition_by)
