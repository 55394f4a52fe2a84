"""Delta Lake transaction-log helpers that need no Spark: used by the Delta engines of :mod:`dlspark.tables`.

Pure parts (per-file stats from Parquet footers, schema comparison) and
the driver-side delta-rs steps of a write (publish staged files, commit them as one transaction against a
snapshot) and of a read (load a version, list its files). Spark never appears here; tests need no JVM.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from dlspark.tables.errors import TableConflictError, TableError
from dlspark.tables.layout import data_files, partition_dir, partition_values_from_dir, read_footer

if TYPE_CHECKING:
    import pyarrow.parquet as pq
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

# Spark type names (``StructType.json()``, which Delta's schemaString shares) whose Hive directory form is
# also their Delta partition-value form: the types a table written through delta-rs may be partitioned by.
PARTITION_TYPES = frozenset({"string", "byte", "short", "integer", "long", "boolean", "date"})
INTEGER_TYPES = frozenset({"byte", "short", "integer", "long"})
WRITE_ID_KEY = "dlspark.writeId"
_UNREADABLE_FEATURES = frozenset({"columnMapping", "deletionVectors"})


# ---- pure -----------------------------------------------------------------------------------------------

def file_stats(meta: pq.FileMetaData, integer_columns: Iterable[str] = ()) -> str:
    """Delta ``stats`` JSON: numRecords, nullCount of flat columns, min/max of ``integer_columns``."""
    stats: dict = {"numRecords": meta.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    wanted = set(integer_columns)
    for index in range(meta.num_columns):
        name = meta.schema.column(index).path
        chunks = [meta.row_group(rg).column(index).statistics for rg in range(meta.num_row_groups)]
        if "." in name or not chunks or any(s is None for s in chunks):
            continue  # nested leaves (lists) do not carry the column's stats
        if all(s.has_null_count for s in chunks):
            stats["nullCount"][name] = sum(s.null_count for s in chunks)
        if name in wanted and all(s.has_min_max for s in chunks):
            stats["minValues"][name] = min(s.min for s in chunks)
            stats["maxValues"][name] = max(s.max for s in chunks)
    return json.dumps({k: v for k, v in stats.items() if v != {}}, separators=(",", ":"))


def normalize_schema(node: dict) -> dict:
    """A Spark/Delta struct schema JSON, nullable throughout (fields, elements, values), metadata dropped."""
    return {"type": "struct", "fields": [
        {"name": f["name"], "type": _normalize_type(f["type"]), "nullable": True, "metadata": {}}
        for f in node["fields"]
    ]}


def _normalize_type(node: str | dict) -> str | dict:
    if not isinstance(node, dict):
        return node
    if node["type"] == "array":
        return {"type": "array", "elementType": _normalize_type(node["elementType"]), "containsNull": True}
    if node["type"] == "map":
        return {"type": "map", "keyType": _normalize_type(node["keyType"]),
                "valueType": _normalize_type(node["valueType"]), "valueContainsNull": True}
    return normalize_schema(node)


def type_name(node: str | dict) -> str:
    """"long", "string", ... for primitive types; "array", "map" or "struct" for nested ones."""
    return node if isinstance(node, str) else node["type"]


def schema_difference(existing: dict, new: dict) -> str | None:
    """How two normalised schemas differ (missing/new columns, changed types); None when they match."""
    old_types = {f["name"]: f["type"] for f in existing["fields"]}
    new_types = {f["name"]: f["type"] for f in new["fields"]}
    problems = []
    if missing := [n for n in old_types if n not in new_types]:
        problems.append(f"missing columns {missing}")
    if extra := [n for n in new_types if n not in old_types]:
        problems.append(f"new columns {extra}")
    if changed := [n for n in new_types if n in old_types and old_types[n] != new_types[n]]:
        problems.append("changed types " + ", ".join(f"{n}: {old_types[n]} -> {new_types[n]}" for n in changed))
    return "; ".join(problems) or None


def delta_rs_uri(uri: str) -> str:
    """The form of a Hadoop-style location that delta-rs opens (``s3a://`` -> ``s3://``, ``file:`` -> path)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("s3a", "s3n"):
        return "s3://" + uri.split("://", 1)[1]
    if parsed.scheme == "file":
        return parsed.path
    return uri


# ---- files ----------------------------------------------------------------------------------------------

def publish_staged(fs: AbstractFileSystem, root: str, staging: str, schema: dict,
                   partition_by: list[str], moved: list[str]) -> list:
    """Move the Parquet files under ``staging`` to ``<root>/<col>=<val>/part-<uuid>.parquet``.

    Every moved path is appended to ``moved`` (for clean-up). Returns one ``AddAction`` per non-empty file,
    with partition values as strings and stats from the footer.
    """
    files = sorted(data_files(fs, staging).items())
    integers = [f["name"] for f in schema["fields"] if type_name(f["type"]) in INTEGER_TYPES]
    now_ms = int(time.time() * 1000)

    def publish(item: tuple[str, int]) -> Any:
        return _publish_one(fs, root, staging, item, partition_by, integers, now_ms, moved)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [action for action in pool.map(publish, files) if action is not None]


def _publish_one(fs: AbstractFileSystem, root: str, staging: str, item: tuple[str, int],
                 partition_by: list[str], integers: list[str], now_ms: int, moved: list[str]) -> Any:
    from deltalake.transaction import AddAction

    path, size = item
    meta = read_footer(fs, path)
    if meta.num_rows == 0:
        return None
    try:
        values = partition_values_from_dir(path[len(staging) + 1:].rpartition("/")[0], partition_by)
    except ValueError as err:
        raise TableError(f"unexpected file {path} in the staging directory: {err}") from err
    rel = f"{partition_dir(values)}part-{uuid.uuid4()}.parquet"
    fs.makedirs(f"{root}/{rel}".rpartition("/")[0], exist_ok=True)
    fs.mv(path, f"{root}/{rel}")
    moved.append(f"{root}/{rel}")
    return AddAction(rel, size, values, now_ms, True, file_stats(meta, integers))


# ---- delta-rs -------------------------------------------------------------------------------------------

def load_table(uri: str, version: int | None = None, *, missing_ok: bool = False) -> Any:
    """The ``deltalake.DeltaTable`` at ``version`` (None: latest); None if there is none and ``missing_ok``."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        latest = DeltaTable(delta_rs_uri(uri))
    except TableNotFoundError as err:
        if missing_ok:
            return None
        raise TableError(f"no Delta table at {uri}: it has not been written yet (no _delta_log); "
                         "write it with write_table(..., fmt='delta') first") from err
    if version is None or version == latest.version():
        return latest
    if not 0 <= version <= latest.version():
        raise TableError(f"{uri} has no version {version}; its versions run from 0 to {latest.version()}")
    try:
        return DeltaTable(delta_rs_uri(uri), version=version)
    except DeltaError as err:
        raise TableError(f"cannot load version {version} of {uri} (latest is {latest.version()}): {err}; "
                         "its log may have been cleaned up, read a later version") from err


def check_write_target(uri: str, table: Any, schema: dict, partition_by: list[str], mode: str) -> None:
    """TableError unless a write of ``schema``/``partition_by`` fits the existing ``table``."""
    existing = list(table.metadata().partition_columns)
    if existing != partition_by:
        raise TableError(f"{uri} is partitioned by {existing}, this write by {partition_by}; "
                         "partition the same way or write to a new path")
    diff = schema_difference(normalize_schema(json.loads(table.schema().to_json())), schema)
    if diff and mode == "append":
        raise TableError(f"cannot append to {uri}: {diff}; select the table's columns with their types, "
                         "or use mode='overwrite' to replace the schema")


def commit(uri: str, base: Any, actions: list, schema: dict, mode: str, partition_by: list[str]) -> str | None:
    """Commit ``actions`` as one transaction against snapshot ``base`` (None: create the table).

    An overwrite is not retried over a concurrent commit (it must replace exactly what it read); an append
    is rebased by delta-rs over concurrent appends. An append with no files commits nothing. Returns the
    commit's write id (None when nothing was committed); a refused commit raises TableConflictError.
    """
    from deltalake import Schema
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import CommitProperties, create_table_with_add_actions

    read = -1 if base is None else base.version()
    if base is not None and mode == "append" and not actions:
        return None
    write_id = uuid.uuid4().hex
    props = CommitProperties(custom_metadata={WRITE_ID_KEY: write_id},
                             max_commit_retries=0 if mode == "overwrite" else None)
    try:
        if base is None:
            create_table_with_add_actions(delta_rs_uri(uri), Schema.from_json(json.dumps(schema)), actions,
                                          mode="error", partition_by=partition_by, commit_properties=props)
        else:
            base.create_write_transaction(actions, mode, Schema.from_json(json.dumps(schema)),
                                          partition_by=partition_by, commit_properties=props)
    except CommitFailedError as err:
        raise _conflict(uri, read, mode, err) from err
    except DeltaError as err:
        if base is None and load_table(uri, missing_ok=True) is not None:
            raise _conflict(uri, read, mode, err) from err
        raise TableError(f"delta-rs refused the {mode} commit to {uri}: {err}") from err
    return write_id


def _conflict(uri: str, read: int, mode: str, err: Exception) -> TableConflictError:
    seen = f"version {read}" if read >= 0 else "that no table existed"
    return TableConflictError(f"{mode} to {uri} read {seen}, but another writer committed since "
                              f"({type(err).__name__}: {err}); rerun the write against the new version")


def committed_version(uri: str, base: Any, write_id: str | None) -> int:
    """The version that commit ``write_id`` made (``base``'s version when ``write_id`` is None)."""
    read = -1 if base is None else base.version()
    if write_id is None:
        return read
    table = load_table(uri)
    for entry in table.history(limit=max(table.version() - read, 1)):
        if entry.get(WRITE_ID_KEY) == write_id:
            return int(entry["version"])
    log.warning("commit %s to %s not found in its history; reporting the latest version", write_id, uri)
    return table.version()


def add_files(table: Any) -> list[dict[str, Any]]:
    """One dict per data file of the snapshot: ``path`` (decoded), ``size_bytes``, ``partition.<col>``, ..."""
    actions = table.get_add_actions(flatten=True)
    columns = {name: actions.column(name).to_pylist() for name in actions.column_names}
    files = [dict(zip(columns, row)) for row in zip(*columns.values())]
    return [{**f, "path": unquote(f["path"])} for f in files]  # the log holds URI-encoded paths


def check_readable(uri: str, table: Any) -> None:
    """TableError if reading the snapshot's files as plain Parquet would be wrong (column mapping, DVs)."""
    protocol = table.protocol()
    unsupported = set(protocol.reader_features or ()) & _UNREADABLE_FEATURES
    if protocol.min_reader_version == 2:
        unsupported.add("columnMapping")
    if unsupported:
        raise TableError(f"{uri} uses Delta reader features {sorted(unsupported)} that dlspark cannot read "
                         "without delta-spark; add the delta-spark jars to the session")
