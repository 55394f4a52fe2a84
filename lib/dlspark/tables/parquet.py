"""The Parquet engine: a folder of Parquet files in Hive partition folders, no log.

A DataFrame write is Spark's own Parquet writer. Staged files (written by Python workers, see
:mod:`dlspark.tables.staged`) are published by moving them into the partition folders after a schema
check against a file already in the table: Parquet has no schema log, so files with other columns would
otherwise be appended silently. A delete rewrites the files that hold matching rows without them.
"""
from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlspark.filesystem import remove_paths, resolve
from dlspark.tables.errors import TableError
from dlspark.tables.layout import data_files, fingerprint, first_data_file, read_footer
from dlspark.tables.result import TableSnapshot, WriteResult

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def write(df: "DataFrame", uri: str, mode: str, partition_by: list[str]) -> WriteResult:
    fs, root = resolve(uri)
    before = set(data_files(fs, root)) if mode == "append" and fs.exists(root) else set()
    df.write.mode(mode).partitionBy(*partition_by).parquet(uri)
    new = [p for p in data_files(fs, root) if p not in before]  # Spark's file names are unique per job
    rows = sum(read_footer(fs, p).num_rows for p in new)
    log.info("wrote %d rows in %d parquet files to %s (%s)", rows, len(new), uri, mode)
    return WriteResult(uri, "parquet", mode, None, len(new), rows, "spark-parquet")


def read(spark: "SparkSession", uri: str) -> TableSnapshot:
    fs, root = resolve(uri)
    files = data_files(fs, root) if fs.exists(root) else {}
    if not files:
        raise TableError(f"no Parquet table at {uri}: it has not been written yet "
                         "(write it with write_table(..., fmt='parquet') first)")
    print_ = fingerprint((p[len(root) + 1:], size) for p, size in files.items())
    return TableSnapshot(spark.read.parquet(uri), uri, "parquet", None, print_)


def exists(uri: str) -> bool:
    fs, root = resolve(uri)
    return fs.exists(root) and first_data_file(fs, root) is not None


def publish(uri: str, staged_root: str) -> WriteResult:
    """Move every data file under ``staged_root`` (laid out ``<col>=<value>/``) into the table at ``uri``."""
    fs, root = resolve(uri)
    _check_same_columns(fs, uri, root, staged_root)
    moved: list[str] = []
    rows = 0
    for path in sorted(data_files(fs, staged_root)):
        rel_dir = path[len(staged_root) + 1:].rpartition("/")[0]
        target = f"{root}/{rel_dir + '/' if rel_dir else ''}part-{uuid.uuid4()}.c000.snappy.parquet"
        rows += read_footer(fs, path).num_rows
        fs.makedirs(target.rpartition("/")[0], exist_ok=True)
        fs.mv(path, target)
        moved.append(target)
    log.info("published %d rows in %d parquet files to %s", rows, len(moved), uri)
    return WriteResult(uri, "parquet", "append", None, len(moved), rows, "python-parquet")


def append_arrow(uri: str, rows: pa.Table) -> WriteResult:
    """Append ``rows`` to the Parquet folder at ``uri`` as one new file, without Spark (for long-running Python
    processes such as the model server). The file is written under a hidden name and renamed, so a reader
    never sees half of it; the columns must equal those of the files already there."""
    fs, root = resolve(uri)
    fs.makedirs(root, exist_ok=True)
    existing = first_data_file(fs, root)
    if existing is not None:
        _require_same_columns(uri, read_footer(fs, existing).schema.to_arrow_schema(), rows.schema)
    name = f"part-{uuid.uuid4()}.c000.snappy.parquet"
    hidden, target = f"{root}/_{name}", f"{root}/{name}"
    with fs.open(hidden, "wb") as out:
        pq.write_table(rows, out, compression="snappy")
    fs.mv(hidden, target)
    return WriteResult(uri, "parquet", "append", None, 1, rows.num_rows, "python-parquet")


def delete_where(uri: str, files: list[str], column: str, value: Any) -> int:
    """Remove the rows whose ``column`` equals ``value`` from ``files`` (the table files that hold any):
    a file left empty is deleted, any other is rewritten in place (temp + move). Returns the rows removed."""
    removed = 0
    for location in files:
        fs, path = resolve(location)
        removed += _rewrite_without(fs, path, column, value)
    return removed


def _rewrite_without(fs: "AbstractFileSystem", path: str, column: str, value: Any) -> int:
    folder, _, name = path.rpartition("/")
    remove_paths(fs, [f"{folder}/.{name}.crc"])  # Hadoop's checksum of the old bytes would fail every read
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle)
    if column not in table.column_names:  # a partition column: every row of the file matches
        fs.rm(path)
        return table.num_rows
    keep = pc.invert(pc.fill_null(pc.equal(table.column(column), pa.scalar(value)), False))
    kept = table.filter(keep)
    if kept.num_rows == 0:
        fs.rm(path)
    elif kept.num_rows < table.num_rows:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with fs.open(tmp, "wb") as handle:
            pq.write_table(kept, handle)
        fs.mv(tmp, path)
    return table.num_rows - kept.num_rows


def _check_same_columns(fs: "AbstractFileSystem", uri: str, root: str, staged_root: str) -> None:
    staged = next(iter(sorted(data_files(fs, staged_root))), None)
    existing = first_data_file(fs, root) if fs.exists(root) else None
    if staged is None or existing is None:
        return
    new, old = (read_footer(fs, p).schema.to_arrow_schema() for p in (staged, existing))
    _require_same_columns(uri, old, new)


def _require_same_columns(uri: str, old: pa.Schema, new: pa.Schema) -> None:
    if [(f.name, f.type) for f in new] != [(f.name, f.type) for f in old]:
        raise TableError(
            f"the Parquet table {uri} has columns {old.names} but this run writes {new.names} (types included): "
            "write to a new output path, or re-ingest into an empty one, after a change of the table's columns")

