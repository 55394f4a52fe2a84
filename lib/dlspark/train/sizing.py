"""How many optimizer steps an epoch will have, from the Parquet footers alone (for the LR schedule)."""
from __future__ import annotations

import math
from typing import Any

import pyarrow.parquet as pq
from pyarrow import fs as pafs


def count_rows(files: tuple[str, ...]) -> int:
    """Total rows of the Parquet ``files`` (local paths or URIs), read from their footers."""
    total = 0
    for uri in files:
        filesystem, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
        with filesystem.open_input_file(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def planned_steps(spec: Any, world_size: int, max_steps: int | None) -> int:
    """Batches per rank per epoch, as the feeder yields them (equal on every rank), capped by ``max_steps``.

    Rows that a ``label_map`` skips are not known from footers, so this can overestimate: the cosine then
    simply does not reach zero. It is a schedule length, never a loop bound.
    """
    rows = count_rows(spec.files)
    if spec.limit_rows is not None:
        rows = min(rows, spec.limit_rows)
    per_rank = rows // world_size if spec.drop_last else math.ceil(rows / world_size)
    batches = per_rank // spec.batch_size if spec.drop_last else math.ceil(per_rank / spec.batch_size)
    batches = max(batches, 1)
    return min(batches, max_steps) if max_steps is not None else batches
