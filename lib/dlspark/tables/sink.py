"""``TableSink``: the "workers stage files, the driver commits them" protocol, in the shape of Ray's Datasink.

1. :meth:`TableSink.on_write_start` (driver): a fresh staging folder inside the table (``_``-prefixed, so
   readers never see it; same filesystem, so publishing is a rename) and the :class:`StagingArea` that
   the workers are given.
2. :func:`dlspark.tables.staged.stage_batches` (Python workers, inside ``mapInArrow``): writes Parquet files
   into the area and yields one small outcome row per record naming the file it went to.
3. :meth:`TableSink.commit` (driver): only the files named by the outcome rows are published, so files of
   failed or repeated task attempts never are. Parquet: moved into the partition folders after a schema
   check. Delta: one transaction through delta-rs, or Spark's Delta writer where delta-spark is loaded.
4. :meth:`TableSink.abort` (driver): removes what was staged. Commit removes the staging folder too.

Example (the shape every ingest follows)::

    sink = TableSink(uri, fmt="delta", schema=arrow_schema, blob_columns=("pixels",))
    area = sink.on_write_start()
    try:
        outcomes = df.mapInArrow(partial(stage_batches, process=fn, area=area), ddl)
        files = [...]                      # the staged_file values of the rows to keep
        result = sink.commit(spark, area, files)
    except BaseException:
        sink.abort(area)
        raise
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import pyarrow as pa

from dlspark.filesystem import remove_paths, resolve
from dlspark.tables import delta_rs, parquet, spark_delta
from dlspark.tables.api import DELTA_WRITERS, FORMATS, check_choice, check_path
from dlspark.tables.layout import data_files
from dlspark.tables.result import WriteResult
from dlspark.tables.staged import StagingArea, spark_ddl

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

STAGING_PREFIX = "_dlspark_staging-"


@dataclass(frozen=True)
class TableSink:
    """Where and how staged files become part of a table.

    ``schema`` is the table's data columns as the workers write them (Arrow); the partition column
    ``partition_col`` (string) is in the folder names, not the files.
    """

    uri: str
    fmt: str
    schema: pa.Schema
    partition_col: str = "split"
    blob_columns: tuple[str, ...] = ()
    delta_writer: str = "auto"
    file_bytes: int = 128 << 20

    def __post_init__(self) -> None:
        check_choice("fmt", self.fmt, FORMATS)
        check_choice("delta_writer", self.delta_writer, DELTA_WRITERS)
        object.__setattr__(self, "uri", check_path(self.uri))

    @property
    def ddl(self) -> str:
        """The table's Spark DDL, partition column last (as Spark lists a partitioned folder's columns)."""
        return spark_ddl(self.schema, self.partition_col)

    def on_write_start(self) -> StagingArea:
        """A fresh staging area inside the table for this write's workers."""
        staging = f"{self.uri.rstrip('/')}/{STAGING_PREFIX}{uuid.uuid4().hex}"
        return StagingArea(staging, self.schema, partition_col=self.partition_col, blob_columns=self.blob_columns,
                           file_bytes=self.file_bytes)

    def commit(self, spark: "SparkSession", area: StagingArea, files: Sequence[str]) -> WriteResult:
        """Publish the staged ``files`` (URIs as the workers returned them) to the table as one append.

        Staged files not listed are deleted unpublished; the staging folder is removed in every case.
        """
        fs, staged_root = resolve(area.uri)
        try:
            keep = {resolve(f)[1] for f in files}
            remove_paths(fs, [p for p in data_files(fs, staged_root) if p not in keep])
            if self.fmt == "parquet":
                return parquet.publish(self.uri, staged_root)
            struct = spark.createDataFrame([], self.ddl).schema
            if spark_delta.available(spark, self.delta_writer):
                return spark_delta.publish(spark, self.uri, area.uri, struct, [self.partition_col], bool(keep))
            return delta_rs.publish(self.uri, staged_root, delta_rs.spark_schema_json(struct), [self.partition_col])
        finally:
            remove_paths(fs, [staged_root])

    def abort(self, area: StagingArea) -> None:
        """Remove everything staged in ``area`` (no-op once committed)."""
        fs, staged_root = resolve(area.uri)
        if fs.exists(staged_root):
            log.info("discarding staged files in %s", area.uri)
            remove_paths(fs, [staged_root])
