"""Server-side micro-batching: many small requests in, one forward pass per batch out.

:class:`MicroBatcher` owns a bounded queue and a single worker task on the event loop. The worker takes the
first pending item, keeps collecting until ``max_batch`` items or ``max_wait_ms`` have passed, runs
``run_batch`` once on a dedicated thread (so the event loop keeps accepting requests meanwhile) and resolves
every item's future with its own result. A full queue raises :class:`QueueFull` at once rather than letting
callers wait without bound; the HTTP layer answers 503 with ``Retry-After``.

Admission by latency budget (``max_queue_ms``): the batcher keeps a moving average of the forward pass's seconds
per item, measured on its own batches, and :meth:`MicroBatcher.admit` refuses an item whose predicted wait (the
items ahead of it, queued and running, times that cost) exceeds the budget. Past capacity the server then answers
503 in microseconds instead of queueing work that would miss its deadline, and the admitted requests keep their
latency: the queue never holds more than the budget's worth of work, however many clients there are.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(RuntimeError):
    """More items are pending than the queue holds; retry after ``retry_after`` seconds."""

    def __init__(self, pending: int, capacity: int, retry_after: int = 1, *, wait_ms: float | None = None,
                 budget_ms: float | None = None) -> None:
        if wait_ms is None:
            message = (f"{pending} items pending, queue holds {capacity}: the server is saturated, retry in "
                       f"{retry_after}s (or raise serve.queue_size / serve.max_batch)")
        else:
            message = (f"{pending} requests or items ahead would wait about {wait_ms:.0f} ms, over the serve.max_queue_ms "
                       f"budget of {budget_ms:.0f} ms: the server is at capacity, retry in {retry_after}s")
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = "queue_full" if wait_ms is None else "over_capacity"


class AdmissionGate:
    """Latency budget over the whole server-side wait, by Little's law: requests in flight (admitted, not yet
    answered) divided by the rate they are being answered (completions in the last ``window_s``) is how long a
    new request would take. Over ``budget_ms`` the gate refuses it (:class:`QueueFull`), before any work is done
    for it. It sees what the batcher's own queue does not: requests that wait for the event loop or the GIL
    (decoding, HTTP) when the CPU, not the model, is the bottleneck."""

    def __init__(self, budget_ms: float | None, window_s: float = 1.0, min_samples: int = 16) -> None:
        self.budget = None if budget_ms is None else budget_ms / 1000.0
        self.window, self.min_samples = window_s, min_samples
        self.in_flight = 0
        self._done: deque[float] = deque()

    def rate(self, now: float | None = None) -> float | None:
        """Requests answered per second over the span the last window's completions cover; None with fewer than
        ``min_samples`` of them (after an idle spell there is no evidence yet, so everything is admitted)."""
        now = time.monotonic() if now is None else now
        while self._done and self._done[0] < now - self.window:
            self._done.popleft()
        if len(self._done) < self.min_samples:
            return None
        return len(self._done) / max(now - self._done[0], 1e-3)

    def predicted_wait(self) -> float:
        rate = self.rate()
        return (self.in_flight + 1) / rate if rate else 0.0

    def enter(self) -> None:
        """Admit one request (raise :class:`QueueFull` when it would miss the budget)."""
        if self.budget is not None and self.in_flight > 0:
            wait = self.predicted_wait()
            if wait > self.budget:
                raise QueueFull(self.in_flight + 1, self.in_flight, wait_ms=wait * 1000, budget_ms=self.budget * 1000)
        self.in_flight += 1

    def leave(self, answered: bool = True) -> None:
        """One admitted request is done; ``answered`` False (refused further on) does not count toward the rate."""
        self.in_flight -= 1
        if answered:
            self._done.append(time.monotonic())


class MicroBatcher(Generic[T, R]):
    """Collects submitted items into batches for ``run_batch``; start it inside a running event loop.

    Parameters
    ----------
    run_batch
        ``items -> results`` (same length, same order); a result that is an ``Exception`` is raised to
        that item's caller only. Runs on one worker thread, never concurrently with itself.
    max_batch, max_wait_ms, queue_size
        Largest batch; how long to wait for a batch to fill once its first item arrived; most pending items.
    max_queue_ms
        Latency budget for the wait before an item's forward pass starts (None: only ``queue_size`` bounds it).
    on_batch
        Called with (batch size, seconds the forward pass took) after every batch, e.g. for metrics.
    """

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R | Exception]], *, max_batch: int, max_wait_ms: float,
                 queue_size: int, max_queue_ms: float | None = None,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0 or (max_queue_ms is not None and max_queue_ms <= 0):
            raise ValueError(f"max_batch and queue_size must be >= 1, max_wait_ms >= 0 and max_queue_ms > 0, got "
                             f"{max_batch}, {queue_size}, {max_wait_ms}, {max_queue_ms}")
        self._run_batch = run_batch
        self.max_batch, self.max_wait, self.queue_size = max_batch, max_wait_ms / 1000.0, queue_size
        self.budget = None if max_queue_ms is None else max_queue_ms / 1000.0
        self.item_seconds: float | None = None   # moving average of forward-pass seconds per item (None: no batch yet)
        self._running = 0                         # items in the forward pass now
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting the batch being run)."""
        return self._queue.qsize() if self._queue is not None else 0

    def predicted_wait(self, items: int = 1) -> float:
        """Seconds until a batch holding ``items`` more would finish: everything ahead of them, queued or running,
        plus themselves, at the measured cost per item (0 before the first batch)."""
        return (self.depth + self._running + items) * (self.item_seconds or 0.0)

    def admit(self, items: int = 1) -> None:
        """Raise :class:`QueueFull` now when ``items`` more would not fit the queue or the latency budget; call it
        before decoding a request, so that a refusal costs nothing."""
        pending = self.depth + self._running + items
        if self.depth + items > self.queue_size:
            raise QueueFull(pending, self.queue_size)
        if self.budget is not None and self.depth + self._running > 0:
            wait = self.predicted_wait(items)
            if wait > self.budget:
                raise QueueFull(pending, self.queue_size, wait_ms=wait * 1000, budget_ms=self.budget * 1000)

    async def start(self) -> None:
        """Create the queue and the worker task on the running loop."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlspark-batch")
        self._task = asyncio.create_task(self._loop(), name="dlspark-micro-batcher")

    async def stop(self) -> None:
        """Cancel the worker and fail whatever is still queued."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results of ``items`` once their batches ran; raises :class:`QueueFull` when they do not fit."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.submit before start(): start it in the app's lifespan")
        if self.depth + len(items) > self.queue_size:
            raise QueueFull(self.depth + len(items), self.queue_size)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, fut in zip(items, futures):
            self._queue.put_nowait((item, fut))
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._collect()
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # callers that went away
            if batch:
                await self._run(batch)

    async def _collect(self) -> list[tuple[T, asyncio.Future]]:
        """The first pending item plus whatever else arrives within ``max_wait`` (at most ``max_batch``)."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        items = [item for item, _ in batch]
        self._running = len(items)
        start = time.perf_counter()
        try:
            results: Sequence[Any] = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, items)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        except Exception as exc:  # noqa: BLE001 - one failed forward pass fails its batch, not the server
            log.exception("batch of %d failed", len(items))
            results = [exc] * len(items)
        seconds = time.perf_counter() - start
        self._running = 0
        per_item = seconds / len(items)
        self.item_seconds = per_item if self.item_seconds is None else 0.8 * self.item_seconds + 0.2 * per_item
        if self._on_batch is not None:
            self._on_batch(len(items), seconds)
        for (_, fut), result in zip(batch, results):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)
