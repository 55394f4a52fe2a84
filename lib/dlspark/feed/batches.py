"""``open_batches``: one rank's epoch of ready-to-train numpy batches, decoded in background threads."""
from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import numpy as np

from dlspark.feed.decode import Chunk, augment_images, normalize_images
from dlspark.feed.spec import FeedError
from dlspark.feed.stream import WEIGHT, background, fixed_batches, shuffled

if TYPE_CHECKING:
    from dlspark.feed.spec import FeedSpec

Batch = dict[str, np.ndarray]


class Batches:
    """Iterator over one rank's batches of an epoch; ``len()`` is the batch count, equal on every rank."""

    def __init__(self, futures: Iterator[Future], num_batches: int, rows: int) -> None:
        self._futures, self.num_batches, self.rows = futures, num_batches, rows

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return next(self._futures).result()


@contextmanager
def open_batches(spec: FeedSpec, *, rank: int = 0, world_size: int = 1, epoch: int = 0) -> Iterator[Batches]:
    """Open ``rank``'s share of the split for ``epoch``; yields an iterator of numpy batches.

    Images: ``{"x": float32 [B, C, H, W] (or [B, H, W, C] with channels_last), "y": int64 [B]}``; text:
    ``{"input_ids": int64 [B, L], "attention_mask": int64 [B, L], "y": int64 [B]}``. Each row is read by
    exactly one rank; the order depends only on ``(spec.seed, epoch)``; every rank yields ``len(batches)``
    batches (see :mod:`dlspark.feed.plan`). A rank whose share is shorter repeats some of its rows to get there;
    then every batch of that epoch also holds ``"weight"``: float32 ``[B]``, 0 for the repeated rows, which
    evaluation leaves out (so test metrics cover the split's rows exactly once). With ``spec.teacher_column``,
    ``"teacher"`` holds the teacher's float32 logits ``[B, classes]``. Reading, shuffling, decoding and augmentation run in
    ``spec.reader_threads`` threads, ``spec.prefetch_batches`` batches ahead of the caller.
    """
    if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
        raise FeedError(f"rank must be in [0, world_size), got rank={rank!r}, world_size={world_size!r}")
    pool = ThreadPoolExecutor(spec.reader_threads, thread_name_prefix=f"dlspark-feed-r{rank}")
    try:
        source = _epoch_source(spec, rank=rank, world_size=world_size, epoch=epoch, pool=pool)

        def produce() -> Iterator[Future]:
            rng = np.random.default_rng([spec.seed, epoch, rank, 1])
            stream = shuffled(source.chunks(), spec.shuffle_buffer if spec.shuffle else 0, rng)
            raws = fixed_batches(stream, target=source.target, pad=max(0, source.target - source.share_rows),
                                 batch_size=spec.batch_size)
            for index, raw in enumerate(raws):
                yield pool.submit(finish_batch, raw, spec, (spec.seed, epoch, rank, 2, index))

        with background(produce, spec.prefetch_batches, f"dlspark-feed-r{rank}") as futures:
            yield Batches(futures, math.ceil(source.target / spec.batch_size), source.target)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _epoch_source(spec: FeedSpec, *, rank: int, world_size: int, epoch: int, pool: ThreadPoolExecutor):  # noqa: ANN202
    if spec.feeder == "petastorm":
        from dlspark.feed.petastorm_feeder import PetastormEpoch

        return PetastormEpoch(spec, rank=rank, world_size=world_size, epoch=epoch)
    from dlspark.feed.arrow_feeder import ArrowEpoch

    return ArrowEpoch(spec, rank=rank, world_size=world_size, epoch=epoch, pool=pool)


def finish_batch(raw: Chunk, spec: FeedSpec, seed: tuple[int, ...]) -> Batch:
    """Raw rows -> model inputs: augment (train images), scale and normalise, widen ints to int64."""
    y = raw["y"].astype(np.int64, copy=False)
    carried = {k: raw[k] for k in (WEIGHT, "teacher") if k in raw}
    if spec.kind == "image":
        pixels = raw["pixels"]
        if spec.augment:
            pixels = augment_images(pixels, np.random.default_rng(list(seed)))
        mean, std = spec.mean_std
        return {"x": normalize_images(pixels, mean, std, spec.channels_last), "y": y, **carried}
    return {"input_ids": raw["input_ids"].astype(np.int64), "attention_mask": raw["attention_mask"].astype(np.int64),
            "y": y, **carried}
