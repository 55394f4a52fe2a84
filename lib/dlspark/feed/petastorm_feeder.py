"""The petastorm feeder: ``make_spark_converter`` on the driver, ``make_batch_reader`` shards in the workers.

:func:`petastorm_spec` (driver, needs the SparkSession) materialises the split through the converter into
``train.feed.petastorm_cache_dir`` and returns a :class:`FeedSpec` over the converter's files.
:class:`PetastormEpoch` (worker) reads shard ``rank`` of ``world_size`` with petastorm's batch reader and
hands numpy chunks to the same shuffle/batch/decode pipeline as the arrow feeder.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from dlspark.feed import plan
from dlspark.feed.decode import Chunk, columns_for, map_labels
from dlspark.feed.spec import FeedError, FeedSpec, Kind, make_spec
from dlspark.paths import is_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from dlspark.config import FeedConfig

log = logging.getLogger(__name__)


def cache_dir_url(cache_dir: str) -> str:
    """The converter's parent cache dir as a URL (``file://`` for local paths; petastorm needs a scheme)."""
    import os

    if is_uri(cache_dir):
        return cache_dir
    if not os.path.isabs(cache_dir):
        raise FeedError(f"petastorm cache dir {cache_dir!r} is relative; resolve it against paths.data_dir first "
                        "(dlspark.paths.resolve_path)")
    return "file://" + cache_dir


def petastorm_spec(spark: SparkSession, df: DataFrame, feed_cfg: FeedConfig, *, kind: Kind, split: str,
                   cache_dir: str | None = None, min_row_groups: int = 2, seed: int = 0, limit_rows: int | None = None,
                   label_map: Mapping[str, int] | None = None, row_group_bytes: int = 32 * 1024 * 1024,
                   **spec_fields: Any) -> FeedSpec:
    """Materialise ``df`` (one split of an ingested table) with petastorm and return the FeedSpec over it.

    ``cache_dir``: the converter's parent cache dir, absolute or a URI (None: ``feed_cfg.petastorm_cache_dir``,
    which must then be resolved against ``paths.data_dir`` already). ``min_row_groups`` should be at least
    the number of training processes: petastorm shards row groups and refuses more shards than row groups.
    Rows whose label is not in ``label_map`` are filtered out here.
    ``spec_fields`` are passed to :func:`make_spec` (image_shape, max_length, normalize, ...).
    """
    from petastorm.spark import SparkDatasetConverter, make_spark_converter
    from pyspark.sql import functions as F

    url = cache_dir_url(cache_dir if cache_dir is not None else feed_cfg.petastorm_cache_dir)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, url)
    df = df.select(*columns_for(kind, bool(label_map)))
    if label_map:
        df = df.filter(F.col("label").isin(list(label_map)))
    # A split is stored in ingest order, class folder after class folder, and petastorm's reader only shuffles
    # row groups and a window of rows: deal the rows round robin over the partitions and shuffle each, so that
    # every row group mixes the classes (seeded: the same split gives the same files).
    df = df.repartition(max(min_row_groups, df.rdd.getNumPartitions())).sortWithinPartitions(F.rand(seed))
    if limit_rows is not None:
        df = df.limit(limit_rows)
    converter = make_spark_converter(df, parquet_row_group_size_bytes=row_group_bytes)
    log.info("petastorm converter for split %s: %d rows in %d files under %s", split, len(converter),
             len(converter.file_urls), converter.cache_dir_url)
    return make_spec(feed_cfg, kind=kind, files=converter.file_urls, split=split, seed=seed, label_map=label_map,
                     feeder="petastorm", petastorm_cache_dir=converter.cache_dir_url, **spec_fields)


@lru_cache(maxsize=16)
def shard_rows(files: tuple[str, ...], world_size: int) -> tuple[int, ...]:
    """Rows petastorm's ``cur_shard`` r of ``world_size`` reads: its row-group rule (index % shard_count)."""
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import load_row_groups
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    filesystem, paths = get_filesystem_and_path_or_paths(list(files))
    dataset = pq.ParquetDataset(paths, filesystem=filesystem, validate_schema=False, metadata_nthreads=4)
    pieces = load_row_groups(dataset)
    if len(pieces) < world_size:
        raise FeedError(f"the petastorm dataset has {len(pieces)} row groups but {world_size} ranks read it; "
                        f"build the spec with petastorm_spec(..., min_row_groups={world_size}) or more data")
    footers: dict[str, Any] = {}
    out = [0] * world_size
    for index, piece in enumerate(pieces):
        if piece.path not in footers:
            footers[piece.path] = piece.get_metadata()
        out[index % world_size] += footers[piece.path].row_group(piece.row_group).num_rows
    return tuple(out)


class PetastormEpoch:
    """One rank's epoch over a petastorm-materialised split (same attributes as ``ArrowEpoch``)."""

    def __init__(self, spec: FeedSpec, *, rank: int, world_size: int, epoch: int) -> None:
        shares = shard_rows(spec.files, world_size)
        self.share_rows = shares[rank]
        self.target = plan.target_rows(shares, spec.batch_size, spec.drop_last)
        self.spec, self.rank, self.world_size, self.epoch = spec, rank, world_size, epoch

    def chunks(self) -> Iterator[Chunk]:
        """This shard's rows as numpy chunks, read by petastorm's thread pool."""
        from petastorm import make_batch_reader

        spec = self.spec
        with make_batch_reader(list(spec.files), schema_fields=columns_for(spec.kind, bool(spec.label_map)),
                               reader_pool_type="thread", workers_count=spec.reader_threads,
                               shuffle_row_groups=spec.shuffle, seed=spec.seed * 100_003 + self.epoch,
                               num_epochs=1, cur_shard=self.rank, shard_count=self.world_size) as reader:
            _fix_end_of_data_race(reader)
            for batch in reader:
                yield chunk_from_petastorm(batch._asdict(), spec)


def _fix_end_of_data_race(reader: Any) -> None:
    """Make the reader's thread pool check "ventilation completed" *before* "all workers idle".

    petastorm 0.13.1's ``ThreadPool.get_results`` checks the other way round, so when the consumer is ahead of
    the ventilator thread (e.g. a shard of one row group) it can end the epoch before the last row group is
    ventilated, silently dropping it (seen in about one read in four in tests/test_feed_petastorm.py).
    """
    import types

    from petastorm.workers_pool.thread_pool import ThreadPool

    pool = reader._workers_pool
    if type(pool) is ThreadPool and pool._ventilator is not None:
        pool.get_results = types.MethodType(_get_results, pool)


def _get_results(pool: Any) -> Any:
    """``ThreadPool.get_results`` of petastorm 0.13.1 (seeded, strict round robin) with the end check fixed."""
    import queue

    from petastorm.workers_pool import EmptyResultError, VentilatedItemProcessedMessage

    while True:
        if pool._ventilator.completed() and pool.all_workers_done():  # completed first: no item is in flight
            raise EmptyResultError()
        worker = pool._get_results_worker_id
        if pool.current_worker_done(worker):
            pool._get_results_worker_id = (worker + 1) % pool.workers_count
            continue
        try:
            result = pool._results_queues[worker].get(block=True, timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(result, VentilatedItemProcessedMessage):
            pool._ventilated_items_processed_by_worker[worker] += 1
            pool._ventilator.processed_item()
            pool._get_results_worker_id = (worker + 1) % pool.workers_count
        elif isinstance(result, Exception):
            pool.stop()
            pool.join()
            raise result
        else:
            return result


def chunk_from_petastorm(batch: dict[str, np.ndarray], spec: FeedSpec) -> Chunk:
    """A petastorm batch (column -> numpy) as a feeder chunk: pixels bytes -> uint8 tensors, labels mapped."""
    if spec.label_map:
        y, known = map_labels(pa.array(batch["label"], pa.string()), spec.label_map)  # type: ignore[arg-type]
    else:
        y, known = np.asarray(batch["label_index"], np.int64), None
    if spec.kind == "image":
        chunk = {"pixels": _pixels(batch["pixels"], spec.image_shape), "y": y}  # type: ignore[arg-type]
    else:
        chunk = {name: _lists(batch[name], spec.max_length, name) for name in ("input_ids", "attention_mask")}  # type: ignore[arg-type]
        chunk["y"] = y
    return chunk if known is None or known.all() else {k: v[known] for k, v in chunk.items()}


def _pixels(values: Sequence[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    size = int(np.prod(shape))
    if any(len(v) != size for v in values):
        raise FeedError(f"a pixels value does not hold {size} bytes (image_shape {shape}); set image_shape to the "
                        "table's shape column")
    return np.frombuffer(b"".join(values), np.uint8).reshape(len(values), *shape)


def _lists(values: np.ndarray, length: int, name: str) -> np.ndarray:
    arr = values if values.dtype != object else np.stack(values)
    if arr.ndim != 2 or arr.shape[1] != length:
        raise FeedError(f"{name} rows hold {arr.shape[1:]} ids but max_length is {length}; set max_length")
    return arr
