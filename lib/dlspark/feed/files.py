"""Which Parquet files hold one split of an ingested table (Parquet directory or Delta snapshot). No Spark."""
from __future__ import annotations

import os
from urllib.parse import urlparse

from dlspark.feed.spec import FeedError
from dlspark.filesystem import full_uri, resolve
from dlspark.paths import is_uri
from dlspark.tables import delta_log
from dlspark.tables.layout import data_files, escape_partition_value


def split_files(table_uri: str, fmt: str, split: str, version: int | None = None) -> tuple[tuple[str, ...], int | None]:
    """``(files, version)`` of ``split``: sorted data files of a hive-partitioned table (``split=<name>/``).

    Parquet tables have no version (None; ``version`` must be None); Delta tables give the snapshot's files at
    ``version`` (None: latest) and that version. Local tables give plain absolute paths, others URIs.
    """
    if not is_uri(table_uri) and not os.path.isabs(table_uri):
        raise FeedError(f"table path {table_uri!r} is relative; resolve it against paths.data_dir first")
    if fmt == "parquet":
        if version is not None:
            raise FeedError(f"version={version} given for a parquet table {table_uri}; only delta tables have versions")
        return _parquet_split(table_uri, split), None
    if fmt == "delta":
        return _delta_split(table_uri, split, version)
    raise FeedError(f"fmt must be 'parquet' or 'delta', got {fmt!r}")


def _local(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" else uri


def _parquet_split(table_uri: str, split: str) -> tuple[str, ...]:
    fs, root = resolve(table_uri)
    folder = f"{root}/split={escape_partition_value(split)}"
    if not fs.isdir(folder):
        present = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) if fs.isdir(root) else []
        raise FeedError(f"no folder split={split} under {table_uri} (it holds {present}); "
                        "ingest the table first or pick one of its splits")
    files = sorted(data_files(fs, folder))
    if not files:
        raise FeedError(f"{folder} holds no data files")
    return tuple(full_uri(fs, p) for p in files)


def _delta_split(table_uri: str, split: str, version: int | None) -> tuple[tuple[str, ...], int]:
    table = delta_log.load_table(table_uri, version)
    delta_log.check_readable(table_uri, table)
    if "split" not in table.metadata().partition_columns:
        raise FeedError(f"{table_uri} is not partitioned by split (partitions: {table.metadata().partition_columns}); "
                        "train on a table written by the ingest jobs")
    base = _local(table_uri).rstrip("/")
    files = sorted(_join(base, f["path"]) for f in delta_log.add_files(table) if f.get("partition.split") == split)
    if not files:
        raise FeedError(f"version {table.version()} of {table_uri} has no files for split {split!r}")
    return tuple(files), table.version()


def _join(base: str, path: str) -> str:
    if urlparse(path).scheme or path.startswith("/"):  # the Delta protocol allows absolute paths
        return _local(path)
    return f"{base}/{path}"
