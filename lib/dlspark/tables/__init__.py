"""The one table layer: every Parquet/Delta table the project writes goes through this package.

* :func:`write_table` / :func:`read_table` / :func:`table_exists` / :func:`delete_where`
  (:mod:`~dlspark.tables.api`): a Spark DataFrame in and out, with the version and fingerprint read.
* :class:`TableSink` (:mod:`~dlspark.tables.sink`): Python workers stage Parquet files
  (:mod:`~dlspark.tables.staged`), the driver commits them (Ray's Datasink protocol).
* One module per engine: :mod:`~dlspark.tables.parquet`, :mod:`~dlspark.tables.delta_rs`,
  :mod:`~dlspark.tables.spark_delta`; the shared file layout in :mod:`~dlspark.tables.layout` and the
  Delta log helpers in :mod:`~dlspark.tables.delta_log` (both pure). Files go through :mod:`dlspark.filesystem`.
"""
from dlspark.tables.api import delete_where, read_table, table_exists, write_table
from dlspark.tables.errors import TableConflictError, TableError
from dlspark.tables.result import TableSnapshot, WriteResult
from dlspark.tables.sink import TableSink

__all__ = ["TableConflictError", "TableError", "TableSink", "TableSnapshot", "WriteResult", "delete_where",
           "read_table", "table_exists", "write_table"]
