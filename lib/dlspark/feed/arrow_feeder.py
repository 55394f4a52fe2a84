"""The pyarrow feeder: Parquet row groups -> numpy chunks for one rank and epoch. No petastorm, no Spark.

Footers give the layout (rows per row group); :mod:`dlspark.feed.plan` decides which rows this rank reads;
reader threads read whole row groups (only the needed columns) and turn them into numpy views.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow.parquet as pq

from dlspark.feed import plan
from dlspark.feed.decode import Chunk, check_columns, decode_table, map_labels, read_columns
from dlspark.feed.spec import FeedError
from dlspark.paths import is_uri

if TYPE_CHECKING:
    from dlspark.feed.spec import FeedSpec

log = logging.getLogger(__name__)
_local = threading.local()


def open_parquet(uri: str) -> pq.ParquetFile:
    """A ParquetFile for a local path or any URI pyarrow.fs understands (cached per thread)."""
    cache: dict[str, pq.ParquetFile] = _local.__dict__.setdefault("files", {})
    if uri not in cache:
        if len(cache) > 64:
            cache.clear()
        try:
            if is_uri(uri):
                from pyarrow import fs

                filesystem, path = fs.FileSystem.from_uri(uri)
                cache[uri] = pq.ParquetFile(filesystem.open_input_file(path))
            else:
                cache[uri] = pq.ParquetFile(uri, memory_map=True)
        except (OSError, ValueError) as err:
            raise FeedError(f"cannot open {uri} as Parquet ({err}); re-list the split's files with split_files") from err
    return cache[uri]


def layout(spec: FeedSpec, pool: Executor) -> list[tuple[int, int, int]]:
    """``(file index, row group, rows)`` of every row group of the split, checking each file's columns."""
    def one(index_uri: tuple[int, str]) -> list[tuple[int, int, int]]:
        index, uri = index_uri
        meta = open_parquet(uri).metadata
        check_columns(meta.schema.to_arrow_schema().names, spec, uri)
        return [(index, rg, meta.row_group(rg).num_rows) for rg in range(meta.num_row_groups)]

    return [group for groups in pool.map(one, enumerate(spec.files)) for group in groups]


def label_masks(spec: FeedSpec, groups: list[tuple[int, int, int]], pool: Executor) -> dict[tuple[int, int], np.ndarray]:
    """Per row group, which rows have a label in ``spec.label_map`` (empty dict without a label map)."""
    if not spec.label_map:
        return {}

    def one(group: tuple[int, int, int]) -> np.ndarray:
        table = open_parquet(spec.files[group[0]]).read_row_group(group[1], columns=["label"])
        return map_labels(table.column("label"), spec.label_map)[1]  # type: ignore[arg-type]

    masks = dict(zip([(f, rg) for f, rg, _ in groups], pool.map(one, groups)))
    skipped = sum(int((~m).sum()) for m in masks.values())
    if skipped:
        log.info("skipping %d rows whose label is not in the label map %s", skipped, sorted(spec.label_map))
    return masks


def read_task(spec: FeedSpec, masks: dict[tuple[int, int], np.ndarray], task: plan.ReadTask) -> Chunk:
    """The rows of ``task`` (its ranges, label-mapped rows only) as numpy arrays."""
    uri = spec.files[task.file]
    table = open_parquet(uri).read_row_group(task.row_group, columns=read_columns(spec))
    chunk = decode_table(table, spec, f"{uri} row group {task.row_group}")
    index = np.concatenate([np.arange(a, b) for a, b in task.ranges])
    mask = masks.get((task.file, task.row_group))
    if mask is not None:
        index = index[mask[index]]
    if len(index) == len(table) and (index == np.arange(len(table))).all():
        return chunk
    return {k: v[index] for k, v in chunk.items()}


class ArrowEpoch:
    """One rank's epoch: the plan, the rows every rank yields, and the stream of numpy chunks."""

    def __init__(self, spec: FeedSpec, *, rank: int, world_size: int, epoch: int, pool: Executor) -> None:
        groups = layout(spec, pool)
        self.masks = label_masks(spec, groups, pool)
        self.tasks, self.share_rows, total = plan.plan_rank(
            groups, self.masks, rank=rank, world_size=world_size, shuffle=spec.shuffle, seed=spec.seed,
            epoch=epoch, limit_rows=spec.limit_rows)
        if total < world_size:
            raise FeedError(f"the split has {total} usable rows, fewer than the {world_size} ranks reading it; "
                            "use fewer workers, more data or a larger limit_rows")
        bounds = plan.share_bounds(total, world_size)
        shares = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        self.target = plan.target_rows(shares, spec.batch_size, spec.drop_last)
        self.spec, self.pool = spec, pool

    def chunks(self) -> Iterator[Chunk]:
        """This rank's rows in plan order, read ``reader_threads`` row groups ahead."""
        from dlspark.feed.stream import ordered_map

        def read(task: plan.ReadTask) -> Chunk:
            return read_task(self.spec, self.masks, task)

        yield from ordered_map(self.pool, read, self.tasks, lookahead=self.spec.reader_threads)


def read_images_sample(spec: FeedSpec, max_rows: int = 20000) -> np.ndarray:
    """Up to ``max_rows`` uint8 images from the start of the split (file order), for normalisation stats."""
    parts: list[np.ndarray] = []
    total = 0
    with ThreadPoolExecutor(1) as pool:
        for file, rg, _ in layout(spec, pool):
            if total >= max_rows:
                break
            chunk = read_task(spec, {}, _whole(spec, file, rg))
            parts.append(chunk["pixels"][:max_rows - total])
            total += len(parts[-1])
    return np.concatenate(parts) if parts else np.zeros((0, *(spec.image_shape or (1, 1, 1))), np.uint8)


def _whole(spec: FeedSpec, file: int, rg: int) -> plan.ReadTask:
    rows = open_parquet(spec.files[file]).metadata.row_group(rg).num_rows
    return plan.ReadTask(file, rg, ((0, rows),))
