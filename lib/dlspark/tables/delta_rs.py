"""The delta-rs engine: Delta tables without delta-spark's jars.

Executors write Parquet into a staging folder inside the table (Spark's writer for a DataFrame, the Python
workers for staged files), the driver moves the files to ``<table>/<col>=<val>/part-<uuid>.parquet`` and
commits them as ONE Delta transaction with the ``deltalake`` package, against the table version it read
before writing:

* an overwrite conflicts with any commit made after its snapshot (it must replace exactly what it read);
* an append conflicts with a concurrent overwrite (delta-rs's conflict checker);
* concurrent appends both succeed (blind appends commute; valid per the Delta protocol).

A conflict raises :class:`TableConflictError` after the uncommitted files were deleted: rerun the write.
Reads use Spark's Parquet reader over the snapshot's files, partition columns added as typed literals.
"""
from __future__ import annotations

import json
import logging
import uuid
from functools import reduce
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from dlspark.filesystem import remove_paths, resolve
from dlspark.spark.session import session_conf
from dlspark.tables import delta_log
from dlspark.tables.errors import TableError
from dlspark.tables.layout import fingerprint
from dlspark.tables.result import TableSnapshot, WriteResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TIMESTAMP_CONF = "spark.sql.parquet.outputTimestampType"


def spark_schema_json(schema: Any) -> dict:
    """The normalised Delta schema of a Spark ``StructType``."""
    return delta_log.normalize_schema(json.loads(schema.json()))


def check_partition_types(schema: dict, partition_by: list[str]) -> None:
    types = {f["name"]: delta_log.type_name(f["type"]) for f in schema["fields"]}
    if bad := {c: types[c] for c in partition_by if types[c] not in delta_log.PARTITION_TYPES}:
        raise ValueError(f"cannot partition a delta-rs table by {bad}; partition columns must be one of "
                         f"{sorted(delta_log.PARTITION_TYPES)} (derive e.g. a date or string column first)")


def write(df: "DataFrame", uri: str, mode: str, partition_by: list[str]) -> WriteResult:
    schema = spark_schema_json(df.schema)
    check_partition_types(schema, partition_by)
    base = _base(uri, schema, partition_by, mode)
    fs, root = resolve(uri)
    staging = f"_dlspark_staging-{uuid.uuid4().hex}"  # "_" prefix: hidden from readers of the directory
    moved: list[str] = []
    try:
        # Spark's default INT96 timestamps are not what Delta readers expect: write INT64 microseconds (UTC).
        with session_conf(df.sparkSession, {TIMESTAMP_CONF: "TIMESTAMP_MICROS"}):
            df.write.mode("error").partitionBy(*partition_by).parquet(f"{uri}/{staging}")
        actions = delta_log.publish_staged(fs, root, f"{root}/{staging}", schema, partition_by, moved)
    except BaseException:
        remove_paths(fs, moved)
        raise
    finally:
        remove_paths(fs, [f"{root}/{staging}"])
    return _commit(uri, base, actions, moved, schema, mode, partition_by)


def publish(uri: str, staged_root: str, schema: dict, partition_by: list[str]) -> WriteResult:
    """Append every data file under ``staged_root`` to the Delta table at ``uri`` as one transaction."""
    check_partition_types(schema, partition_by)
    base = _base(uri, schema, partition_by, "append")
    fs, root = resolve(uri)
    moved: list[str] = []
    try:
        actions = delta_log.publish_staged(fs, root, staged_root, schema, partition_by, moved)
    except BaseException:
        remove_paths(fs, moved)
        raise
    return _commit(uri, base, actions, moved, schema, "append", partition_by)


def delete_where(uri: str, column: str, value: Any) -> int:
    """Delete the rows whose ``column`` equals ``value`` in one Delta transaction; returns the rows deleted."""
    table = delta_log.load_table(uri)
    literal = "'" + str(value).replace("'", "''") + "'" if isinstance(value, str) else repr(value)
    metrics = table.delete(f'"{column}" = {literal}')
    return int(metrics.get("num_deleted_rows", 0))


def _base(uri: str, schema: dict, partition_by: list[str], mode: str) -> Any:
    base = delta_log.load_table(uri, missing_ok=True)  # the snapshot this write commits against
    if base is not None:
        delta_log.check_write_target(uri, base, schema, partition_by, mode)
    return base


def _commit(uri: str, base: Any, actions: list, moved: list[str], schema: dict, mode: str,
            partition_by: list[str]) -> WriteResult:
    fs, _ = resolve(uri)
    try:
        write_id = delta_log.commit(uri, base, actions, schema, mode, partition_by)
    except TableError:
        remove_paths(fs, moved)  # a refused commit wrote no log entry: its files are garbage
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


def read(spark: "SparkSession", uri: str, version: int | None, *, with_spark_reader: bool) -> TableSnapshot:
    table = delta_log.load_table(uri, version)
    files = delta_log.add_files(table)
    if with_spark_reader:
        df = spark.read.format("delta").option("versionAsOf", table.version()).load(uri)
    else:
        delta_log.check_readable(uri, table)
        df = _read_files(spark, uri, table, files)
    print_ = fingerprint((f["path"], int(f["size_bytes"])) for f in files)
    return TableSnapshot(df, uri, "delta", table.version(), print_)


def exists(uri: str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(delta_log.delta_rs_uri(uri))


def _read_files(spark: "SparkSession", uri: str, table: Any, files: list[dict]) -> "DataFrame":
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


def _with_partition_values(df: "DataFrame", schema: Any, values: dict[str, Any]) -> "DataFrame":
    from pyspark.sql import functions as F

    return df.select(*[F.lit(values[f.name]).cast(f.dataType).alias(f.name) if f.name in values else df[f.name]
                       for f in schema.fields])


def _file_uri(uri: str, path: str) -> str:
    if urlparse(path).scheme or path.startswith("/"):  # the protocol allows absolute paths
        return path
    return f"{uri}/{path}"
