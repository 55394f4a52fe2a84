"""The workers' half of :class:`dlspark.tables.sink.TableSink`: Python workers write the table's Parquet files
themselves; Spark carries only one small outcome row per record.

Large rows (image tensors) would otherwise cross Python -> JVM, be converted twice, be kept (persisted)
until the counts are known, and be scanned again to be written. Here the processing stage (inside
``mapInArrow``) writes its good rows straight into a staging folder inside the table: one Parquet file per
partition value and task attempt (a next one once a file holds ``file_bytes``), one row group per Arrow
batch. Each outcome row names the staged file
its record went to. The driver then drops the rows found to be duplicates across tasks from their files
(:func:`drop_records`), and commits the referenced files (:meth:`dlspark.tables.sink.TableSink.commit`).
Files of failed or repeated task attempts are never referenced, so they are never published.

Pure code (pyarrow + :mod:`dlspark.filesystem`): tested without Spark.
"""
from __future__ import annotations

import json
import logging
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dlspark.filesystem import arrow_filesystem, full_uri, open_file, resolve, write_text
from dlspark.runlog import task_stage, task_timings

log = logging.getLogger(__name__)

TASK_STATS = "_task_stats"  # per-task step timings beside the staged files (hidden: never published)
STAGED_FILE = "staged_file"  # the outcome column naming the staged file of a written record
_SPARK_TYPES = {
    pa.string(): "string", pa.int32(): "int", pa.int64(): "bigint", pa.bool_(): "boolean", pa.binary(): "binary",
    pa.list_(pa.int32()): "array<int>", pa.list_(pa.int8()): "array<tinyint>", pa.timestamp("us", tz="UTC"): "timestamp",
}


def spark_ddl(schema: pa.Schema, partition_col: str) -> str:
    """Spark DDL of a staged table: ``schema``'s columns, then the (string) partition column, as Spark
    lists a partitioned folder's columns."""
    fields = [f"{f.name} {_SPARK_TYPES[f.type]}" for f in schema]
    return ", ".join([*fields, f"{partition_col} string"])


@dataclass(frozen=True)
class StagingArea:
    """Where a task writes its rows: ``<uri>/<partition_col>=<value>/part-<attempt uuid>-<n>.parquet``.

    ``schema`` is the table's data columns (the partition column is in the directory name, not the file).
    """

    uri: str
    schema: pa.Schema
    partition_col: str = "split"
    compression: str = "snappy"
    # Large opaque columns (tensors, file bytes): no dictionary encoding and no min/max statistics, which
    # would cost more CPU than the whole decode of those values and help no reader.
    blob_columns: tuple[str, ...] = ()
    # A file is closed once it holds this much and the partition's next rows start a new one, so a task
    # may process any amount of data (one task per core: no per-task start-up cost) and files stay readable.
    file_bytes: int = 128 << 20

    def writer_options(self) -> dict:
        """Keyword arguments for ``pq.ParquetWriter``."""
        return writer_options(self.schema, self.blob_columns, self.compression)


def writer_options(schema: pa.Schema, blob_columns: Iterable[str], compression: str = "snappy") -> dict:
    """Parquet writer options: blobs are stored plain (no dictionary, statistics or compression: decoded
    pixels barely compress, and snappy would add ~40% to the write); every other column is compressed."""
    blobs = set(blob_columns)
    small = [name for name in schema.names if name not in blobs]
    codecs = {name: ("none" if name in blobs else compression) for name in schema.names}
    return {"compression": codecs, "use_dictionary": small, "write_statistics": small}


class PartitionWriters:
    """The open Parquet writers of one task attempt, one per partition value, created on first use."""

    def __init__(self, area: StagingArea) -> None:
        self.area = area
        self.fs, self.root = resolve(area.uri)
        native = arrow_filesystem(area.uri)  # pyarrow's own writer where it has one: ~20% faster
        self.native = native[0] if native is not None and native[1] == self.root else None
        self.tag = uuid.uuid4().hex
        self._open: dict[str, tuple[str, object, pq.ParquetWriter]] = {}
        self._files = 0

    def write(self, value: str, rows: pa.Table) -> str:
        """Append ``rows`` (the area's schema) as one row group of ``value``'s file; returns the file's URI."""
        if value not in self._open:
            self._open[value] = self._new_file(value)
        uri, handle, writer = self._open[value]
        writer.write_table(rows.cast(self.area.schema), row_group_size=max(1, rows.num_rows))
        if handle.tell() >= self.area.file_bytes:  # type: ignore[attr-defined]
            self._close(value)
        return uri

    def _new_file(self, value: str) -> tuple[str, object, pq.ParquetWriter]:
        folder = f"{self.root}/{self.area.partition_col}={value}"
        self.fs.makedirs(folder, exist_ok=True)
        path = f"{folder}/part-{self.tag}-{self._files:05d}.parquet"
        self._files += 1
        handle = self.native.open_output_stream(path) if self.native else self.fs.open(path, "wb")
        return full_uri(self.fs, path), handle, pq.ParquetWriter(handle, self.area.schema, **self.area.writer_options())

    def _close(self, value: str) -> None:
        _, handle, writer = self._open.pop(value)
        writer.close()
        handle.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        for value in list(self._open):
            self._close(value)


ProcessFn = Callable[[pa.RecordBatch], "tuple[pa.Table, pa.RecordBatch]"]


@contextmanager
def parquet_file(uri: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer for one file at ``uri`` (a sidecar file such as an ingest listing), closed on exit."""
    with open_file(uri, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        yield writer


def staged_outcome_ddl(outcome_ddl: str) -> str:
    """Spark DDL of what :func:`stage_batches` yields: ``process``'s outcome columns, then ``staged_file``."""
    return f"{outcome_ddl}, {STAGED_FILE} string"


def stage_batches(batches: Iterable[pa.RecordBatch], process: ProcessFn, area: StagingArea) -> Iterator[pa.RecordBatch]:
    """The ``mapInArrow`` body: ``process`` turns an input batch into (good rows, outcome rows).

    ``good rows`` hold the table's columns plus the partition column, in the same order as the outcome rows
    whose ``reject_reason`` is null. Yields the outcome rows with ``staged_file`` added.
    """
    writers = PartitionWriters(area)
    with task_timings() as timings:
        try:
            for batch in batches:
                rows, outcomes = process(batch)
                with task_stage("write"):
                    files = _write_rows(writers, rows, area.partition_col)
                yield _with_staged_files(outcomes, files)
        finally:
            with task_stage("write"):
                writers.close()
            write_text(f"{area.uri}/{TASK_STATS}/{writers.tag}.json", json.dumps(timings.raw))


def task_seconds(area: StagingArea) -> dict[str, float]:
    """The worker-side seconds per step (read, decode, hash, write, ...) summed over every task attempt that
    staged into ``area`` (CPU-side time inside the tasks, not wall time); read before the commit removes them."""
    fs, root = resolve(f"{area.uri}/{TASK_STATS}")
    total: dict[str, float] = {}
    for path in fs.glob(f"{root}/*.json") if fs.exists(root) else []:
        with fs.open(path, "r") as handle:
            for name, value in json.load(handle).items():
                total[name] = total.get(name, 0.0) + value
    return {name: round(value, 2) for name, value in total.items()}


def _write_rows(writers: PartitionWriters, rows: pa.Table, partition_col: str) -> list[str]:
    """Write ``rows`` grouped by partition value; the staged file of each row, in row order."""
    values = rows.column(partition_col).to_pylist()
    data = rows.drop_columns([partition_col])
    files: list[str] = [""] * len(values)
    for value in dict.fromkeys(values):
        index = [i for i, v in enumerate(values) if v == value]
        path = writers.write(value, data.take(index))
        for i in index:
            files[i] = path
    return files


def _with_staged_files(outcomes: pa.RecordBatch, files: list[str]) -> pa.RecordBatch:
    written = outcomes.column("reject_reason").is_null().to_pylist()
    if sum(written) != len(files):
        raise RuntimeError(f"process returned {len(files)} good rows for {sum(written)} unrejected records; "
                           "this is a bug in the batch function")
    it = iter(files)
    staged = pa.array([next(it) if ok else None for ok in written], type=pa.string())
    return pa.RecordBatch.from_arrays([*outcomes.columns, staged], names=[*outcomes.schema.names, STAGED_FILE])


def drop_records(uri: str, id_column: str, record_ids: Iterable[str], blob_columns: Iterable[str] = ()) -> int:
    """Rewrite the staged file ``uri`` without the rows whose ``id_column`` is in ``record_ids``.

    The file is replaced atomically (temp + move); a file left with no rows is deleted. Returns the rows kept.
    """
    fs, path = resolve(uri)
    with fs.open(path, "rb") as handle:
        source = pq.ParquetFile(handle)
        group_rows = source.metadata.row_group(0).num_rows if source.metadata.num_row_groups else 1
        table = source.read()
    drop = pa.array(sorted(set(record_ids)), type=pa.string())
    kept = table.filter(pc.invert(pc.is_in(table.column(id_column), value_set=drop)))
    if kept.num_rows == 0:
        fs.rm(path)
        return 0
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "wb") as handle:
        pq.write_table(kept, handle, row_group_size=max(1, group_rows), **writer_options(kept.schema, blob_columns))
    fs.mv(tmp, path)
    log.info("removed %d duplicate rows from staged file %s", table.num_rows - kept.num_rows, path)
    return kept.num_rows
