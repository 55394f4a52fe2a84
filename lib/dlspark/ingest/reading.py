"""Read listed files in the Python workers, through :mod:`dlspark.filesystem`, and catch the races.

A listing row says what a file was when it was listed (path, modification time at Hadoop's ms precision,
length). Between listing and reading the file may be deleted or rewritten: such a file gets a read reason
(``vanished`` or ``changed``) instead of content, and becomes a quarantine row with that reason rather than
a failed job or a record of other bytes than the ledger says. Pure code (pyarrow), no Spark.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Callable, NamedTuple, TypeVar

import pyarrow as pa

from dlspark.filesystem import FileStatus, read_bytes, status
from dlspark.runlog import task_stage

VANISHED = "vanished"
CHANGED = "changed"
T = TypeVar("T")


class ReadResult(NamedTuple):
    content: bytes | None
    reason: str | None
    detail: str | None


def listing_mismatch(path: str, modified: datetime, length: int) -> tuple[str, str] | None:
    """(``vanished`` | ``changed``, detail) when the file at ``path`` is no longer the one listed, else None."""
    now = status(path)
    if now is None:
        return VANISHED, f"{path} was listed ({length} bytes) but no longer exists"
    if _differs(now, modified, length):
        return CHANGED, (f"listed with {length} bytes, modified {modified.isoformat()}; now {now.size} bytes, "
                         f"modified {now.modified.isoformat()}: ingest it on the next run")
    return None


def read_listed(path: str, modified: datetime, length: int) -> ReadResult:
    """The bytes of the file ``path`` if it is still the file that was listed, else why not."""
    mismatch = listing_mismatch(path, modified, length)
    if mismatch:
        return ReadResult(None, *mismatch)
    try:
        content = read_bytes(path)
    except FileNotFoundError:
        return ReadResult(None, VANISHED, f"{path} was deleted while being read")
    if len(content) != length:
        return ReadResult(None, CHANGED, f"listed with {length} bytes, read {len(content)}: it changed while being read")
    return ReadResult(content, None, None)


def with_contents(batch: pa.RecordBatch, threads: int = 4) -> pa.RecordBatch:
    """``batch`` (listing rows: path, modification_time, length, ...) plus ``content``, ``read_reason``,
    ``read_detail``; files are read ``threads`` at a time (remote stores are latency-bound)."""
    paths = batch.column("path").to_pylist()
    times = batch.column("modification_time").to_pylist()
    lengths = batch.column("length").to_pylist()
    with task_stage("read"), ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(read_listed, paths, times, lengths))
    columns = {
        "content": pa.array([r.content for r in results], type=pa.binary()),
        "read_reason": pa.array([r.reason for r in results], type=pa.string()),
        "read_detail": pa.array([r.detail for r in results], type=pa.string()),
    }
    kept = [name for name in batch.schema.names if name not in columns]
    return pa.RecordBatch.from_arrays([*(batch.column(n) for n in kept), *columns.values()], names=[*kept, *columns])


def _differs(now: FileStatus, modified: datetime, length: int) -> bool:
    """Size or time differ (both at Hadoop's ms precision: the listing and status() truncate alike)."""
    return now.size != length or now.modified != modified


def read_then(batch: pa.RecordBatch, process: "Callable[[pa.RecordBatch], T]") -> "T":
    """``process(with_contents(batch))``: the staged-write body for inputs that are listed files."""
    return process(with_contents(batch))
