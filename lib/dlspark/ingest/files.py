"""Input files, the processed-files ledger and the ``_dlspark`` sidecar folder of an output table.

The ledger makes ingest incremental: a file (path, modification time, size) that a previous run
processed is not read again. It lives in ``<output>/_dlspark/ledger`` (Spark and Delta readers skip
``_``-prefixed folders), next to the label mapping and the JSON run summaries.
"""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dlspark.filesystem import list_directories
from dlspark.runlog import StageTimings, log_progress
from dlspark.spark.session import session_conf
from dlspark.tables import table_exists, write_table
from dlspark.tables.staged import parquet_file

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

LEDGER_SCHEMA = T.StructType([
    T.StructField("path", T.StringType()),
    T.StructField("modification_time", T.TimestampType()),
    T.StructField("length", T.LongType()),
    T.StructField("ingest_run_id", T.StringType()),
    T.StructField("ingested_at", T.TimestampType()),
])
LISTING_SCHEMA = T.StructType(LEDGER_SCHEMA.fields[:3])
_FILE_KEY = ["path", "modification_time", "length"]
# The listing is one small Parquet file of many row groups: with no open cost, Spark splits it into one
# partition per core (bytes per core), and the cached listing keeps that partitioning, so the workers that
# read and decode the files need no shuffle to spread them over the cores.
LISTING_CONF = {"spark.sql.files.openCostInBytes": "1"}
LISTING_ROW_GROUP = 1000  # rows per row group of the listing: the unit Spark splits it by


class InputNotFound(FileNotFoundError):
    """The configured input path does not exist or holds no files."""


@dataclass(frozen=True)
class Sidecar:
    """Paths of the bookkeeping files kept beside an output table."""

    table: str

    @property
    def root(self) -> str:
        return f"{self.table.rstrip('/')}/_dlspark"

    @property
    def ledger(self) -> str:
        return f"{self.root}/ledger"

    @property
    def labels(self) -> str:
        return f"{self.root}/labels.json"

    def run_summary(self, run_id: str) -> str:
        return f"{self.root}/runs/{run_id}.json"


def list_files(spark: "SparkSession", path: str, *, glob: str, recursive: bool, sidecar: Sidecar) -> "tuple[DataFrame, int]":
    """(path, modification_time, length) of every file under ``path`` whose name matches ``glob``, persisted,
    and how many; contents are not read.

    The listing goes through :mod:`dlspark.filesystem` (one folder at a time, written to a Parquet file in the
    sidecar, so neither the driver's memory nor a task's size grows with the file count) instead of Spark's
    file index, which silently skips zero-byte files in scans and every name starting with ``.`` or ``_``:
    here every file that exists is listed, to be ingested or quarantined.
    """
    listing_uri = f"{sidecar.root}/listings/{uuid.uuid4().hex}.parquet"
    try:
        listed = write_listing(path, listing_uri, glob=glob, recursive=recursive)
    except FileNotFoundError as exc:
        raise InputNotFound(f"input path {path!r} does not exist; check paths.data_dir and the ingest input key") from exc
    listing = spark.read.schema(LISTING_SCHEMA).parquet(listing_uri).persist()
    with session_conf(spark, LISTING_CONF):
        listing.count()
    return listing, listed


def write_listing(path: str, listing_uri: str, *, glob: str, recursive: bool) -> int:
    """Write the files under ``path`` matching ``glob`` as (path, modification_time ms, length) rows; their count."""
    schema = pa.schema([("path", pa.string()), ("modification_time", pa.timestamp("us", tz="UTC")), ("length", pa.int64())])
    count = 0
    with parquet_file(listing_uri, schema) as writer:
        for folder in list_directories(path, recursive=recursive):
            rows = [(uri, st.modified, st.size) for uri, st in folder if name_matches(uri.rsplit("/", 1)[-1], glob)]
            if rows:
                writer.write_table(pa.table(list(zip(*rows)), schema=schema), row_group_size=LISTING_ROW_GROUP)
                count += len(rows)
    return count


def name_matches(name: str, glob: str) -> bool:
    """Hadoop's ``pathGlobFilter`` on a file name: ``*``, ``?``, ``[...]`` and ``{a,b}`` alternatives."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _expand_braces(glob))


def _expand_braces(glob: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", glob)
    if match is None:
        return [glob]
    head, tail = glob[:match.start()], glob[match.end():]
    return [p for option in match.group(1).split(",") for p in _expand_braces(head + option + tail)]


def read_ledger(spark: "SparkSession", sidecar: Sidecar) -> "DataFrame | None":
    """The ledger of files processed by earlier runs, or ``None`` before the first run.

    Asked of the filesystem first: over Spark Connect a read of a missing path fails only at the first action."""
    if not table_exists(sidecar.ledger, fmt="parquet"):
        return None
    return spark.read.schema(LEDGER_SCHEMA).parquet(sidecar.ledger)


def unprocessed_files(listing: "DataFrame", ledger: "DataFrame | None") -> "DataFrame":
    """Files in ``listing`` that no earlier run recorded with the same modification time and size."""
    if ledger is None:
        return listing
    return listing.join(F.broadcast(ledger.select(*_FILE_KEY)), on=_FILE_KEY, how="left_anti")


def append_ledger(files: "DataFrame", sidecar: Sidecar, run_id: str) -> None:
    """Record ``files`` (path, modification_time, length) as processed by ``run_id``."""
    rows = files.select(*_FILE_KEY).withColumn("ingest_run_id", F.lit(run_id)).withColumn("ingested_at", F.current_timestamp())
    write_table(rows.coalesce(1), sidecar.ledger, fmt="parquet", mode="append")


@dataclass(frozen=True)
class FileCounts:
    """File-level counts from the listing/ledger stage: listed = already_ingested + new."""

    listed: int
    already_ingested: int
    new: int


def find_new_files(
    spark: "SparkSession", source: str, glob: str, recursive: bool, sidecar: Sidecar, timings: StageTimings
) -> "tuple[DataFrame, FileCounts]":
    """List ``source`` and drop the files the ledger has seen: the new files (persisted) and the counts.
    Only the new files are read afterwards (by their listed paths), so old files are never re-read."""
    start = time.perf_counter()
    with timings.stage("list"):
        listing, listed = list_files(spark, source, glob=glob, recursive=recursive, sidecar=sidecar)
        if listed == 0:
            raise InputNotFound(f"no files match {glob!r} under {source}; check the ingest input path and glob")
        ledger = read_ledger(spark, sidecar)
        if ledger is None:  # first run: every listed file is new
            new, n_new = listing, listed
        else:
            new = unprocessed_files(listing, ledger).persist()
            n_new = new.count()
            listing.unpersist()  # `new` is materialised; the caller unpersists it
    log_progress("list", rows=listed, seconds=time.perf_counter() - start, unit="files")
    log.info("%d files listed, %d already ingested, %d new", listed, listed - n_new, n_new)
    return new, FileCounts(listed, listed - n_new, n_new)


@contextlib.contextmanager
def released_on_error(listing: "DataFrame") -> Iterator[None]:
    """Unpersist ``listing`` (from :func:`find_new_files`) if the block fails before ``commit_ingest``
    takes it over (a bad input column, an unreadable labels CSV): no cached frame outlives a failed run."""
    try:
        yield
    except BaseException:
        listing.unpersist()
        raise
