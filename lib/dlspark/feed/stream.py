"""Row streams -> shuffled, equal-length batches; the background thread that prefetches them. Pure code."""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from dlspark.feed.decode import Chunk

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def rows(chunk: Chunk) -> int:
    return len(chunk["y"])


def take(chunk: Chunk, index: np.ndarray | slice) -> Chunk:
    return {k: v[index] for k, v in chunk.items()}


def concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


class ShufflePool:
    """A fixed-capacity shuffle buffer over whole chunks: each incoming row evicts a random resident row.

    Rows are held in preallocated arrays; a push of ``m`` rows copies ``m`` rows in and ``m`` out (vectorised).
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity, self.rng, self.size = capacity, rng, 0
        self.arrays: Chunk | None = None

    def push(self, chunk: Chunk) -> Iterator[Chunk]:
        """Add ``chunk``; yield the rows it evicts (in random order) once the pool is full."""
        if self.capacity == 0:
            yield chunk
            return
        if self.arrays is None:
            self.arrays = {k: np.empty((self.capacity, *v.shape[1:]), v.dtype) for k, v in chunk.items()}
        fill = min(self.capacity - self.size, rows(chunk))
        for k, v in chunk.items():
            self.arrays[k][self.size:self.size + fill] = v[:fill]
        self.size += fill
        rest = rows(chunk) - fill
        for start in range(fill, fill + rest, self.capacity):
            incoming = take(chunk, slice(start, min(start + self.capacity, fill + rest)))
            pos = self.rng.permutation(self.capacity)[:rows(incoming)]
            out = take(self.arrays, pos)  # fancy indexing copies
            for k, v in incoming.items():
                self.arrays[k][pos] = v
            yield out

    def drain(self) -> Iterator[Chunk]:
        """Yield the resident rows in random order and empty the pool."""
        if self.arrays is not None and self.size:
            yield take(self.arrays, self.rng.permutation(self.size))
        self.size = 0


def shuffled(chunks: Iterable[Chunk], capacity: int, rng: np.random.Generator) -> Iterator[Chunk]:
    """``chunks`` shuffled: rows permuted within each chunk (a row group is in memory anyway), then mixed
    across chunks by a :class:`ShufflePool` of ``capacity`` rows. ``capacity`` 0: order unchanged."""
    pool = ShufflePool(capacity, rng)
    for chunk in chunks:
        if capacity:
            chunk = take(chunk, rng.permutation(rows(chunk)))
        yield from pool.push(chunk)
    yield from pool.drain()


def fixed_batches(chunks: Iterable[Chunk], *, target: int, pad: int, batch_size: int) -> Iterator[Chunk]:
    """Exactly ``target`` rows cut into batches of ``batch_size`` (the last one may be shorter).

    The first ``pad`` rows are kept and repeated (cyclically) at the end when the stream is shorter than
    ``target``; rows beyond ``target`` are dropped. With ``pad`` > 0 every batch carries :data:`WEIGHT`:
    float32 1 for a row of the stream, 0 for a repeated one, so that evaluation counts every row once.
    """
    held: list[Chunk] = []
    kept: list[Chunk] = []
    have = emitted = 0
    for chunk in _with_padding(chunks, pad, kept):
        room = target - emitted - have
        if room <= 0:
            break
        chunk = take(chunk, slice(0, room)) if rows(chunk) > room else chunk
        held.append(chunk)
        have += rows(chunk)
        while have >= batch_size:
            batch, held, have = _split(held, batch_size)
            emitted += batch_size
            yield batch
    if have:
        yield concat(held)
    if emitted + have < target:
        raise RuntimeError(f"the stream gave {emitted + have} rows, {target} were planned "
                           f"(padding {pad} rows held {sum(rows(c) for c in kept)}); did the table change while reading?")


def _with_padding(chunks: Iterable[Chunk], pad: int, kept: list[Chunk]) -> Iterator[Chunk]:
    """Yield ``chunks``, copying their first ``pad`` rows into ``kept``, then yield those rows again (weight 0)."""
    need = pad
    for chunk in chunks:
        if need > 0:
            head = take(chunk, slice(0, need))
            kept.append({k: v.copy() for k, v in head.items()})
            need -= rows(head)
        yield _weighted(chunk, 1.0) if pad else chunk
    if pad and kept:
        again = _weighted(concat(kept), 0.0)  # a share shorter than its padding repeats its rows as often as needed
        for _ in range(-(-pad // rows(again))):
            yield again


WEIGHT = "weight"


def _weighted(chunk: Chunk, value: float) -> Chunk:
    return {**chunk, WEIGHT: np.full(rows(chunk), value, np.float32)}


def _split(held: list[Chunk], size: int) -> tuple[Chunk, list[Chunk], int]:
    joined = concat(held)
    rest = take(joined, slice(size, None))
    return take(joined, slice(0, size)), [rest] if rows(rest) else [], rows(rest)


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], lookahead: int) -> Iterator[R]:
    """``map(fn, items)`` on ``pool`` with at most ``lookahead`` calls in flight, results in input order."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > lookahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


_END = object()


@contextmanager
def background(produce: Callable[[], Iterable[T]], maxsize: int, name: str) -> Iterator[Iterator[T]]:
    """Run ``produce()`` in a daemon thread, ``maxsize`` items ahead; yields an iterator over its items.

    An exception in the thread is re-raised in the consumer. Leaving the context stops the thread.
    """
    items: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def run() -> None:
        source = iter(produce())
        try:
            for item in source:
                if not _put(items, item, stop):
                    return
            _put(items, _END, stop)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            _put(items, err, stop)
        finally:
            getattr(source, "close", lambda: None)()  # runs the producer's finally blocks (readers stop)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield _consume(items)
    finally:
        stop.set()
        thread.join(timeout=30)
        if thread.is_alive():
            log.warning("feeder thread %s did not stop within 30 s; leaving it (daemon)", name)


def _put(items: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _consume(items: queue.Queue) -> Iterator:
    while True:
        item = items.get()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
