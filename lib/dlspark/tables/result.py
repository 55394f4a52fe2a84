"""What a read and a write of the table layer return."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class TableSnapshot:
    """What :func:`dlspark.tables.read_table` read: the DataFrame plus the identity of the data behind it."""

    df: DataFrame
    path: str
    format: str  # "parquet" | "delta"
    version: int | None  # Delta version read; None for Parquet
    fingerprint: str  # hash of the (relative name, size) of the files read


@dataclass(frozen=True)
class WriteResult:
    """What a write or a commit did; ``files`` and ``rows`` count this write's new files only."""

    path: str
    format: str
    mode: str
    version: int | None
    files: int
    rows: int
    writer: str  # "spark-parquet" | "python-parquet" | "spark-delta" | "delta-rs"
