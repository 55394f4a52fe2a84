"""Progress of running structured-streaming queries: every batch's figures by batch id, and idleness.

``StreamingQuery.recentProgress`` keeps only the last 100 batches; :class:`ProgressTracker` polls it and keeps
them all, so a run's report covers every batch. :func:`wait_until_idle` returns once no query has had input for a
while (how a bounded replay or a benchmark ends an unbounded stream).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

PROGRESS_FIGURES = ("batchId", "timestamp", "numInputRows", "inputRowsPerSecond", "processedRowsPerSecond")


def wait_until_idle(tracker: "ProgressTracker", idle_s: float, poll_s: float) -> None:
    """Return once no query has run a batch with input, or had a trigger active, for ``idle_s`` seconds."""
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < idle_s:
        time.sleep(poll_s)
        if tracker.poll_all().busy:
            quiet_since = time.monotonic()
    log.info("no input for %.1f s: stopping the queries", idle_s)


class ProgressTracker:
    """Collects every query's progress by batch id (``recentProgress`` keeps only the last 100)."""

    def __init__(self, queries: Sequence[StreamingQuery]) -> None:
        self.queries = list(queries)
        self.progress: dict[str, dict[int, dict]] = {q.name: {} for q in self.queries}
        self.busy = False

    def poll_all(self) -> "ProgressTracker":
        """Record new progress; ``busy`` = a new batch with input arrived or a trigger is running."""
        self.busy = False
        for q in self.queries:
            _raise_if_failed(q)
            seen = self.progress.setdefault(q.name, {})
            for p in map(progress_dict, q.recentProgress):
                if p["batchId"] not in seen:
                    seen[p["batchId"]] = p
                    self.busy |= p["numInputRows"] > 0
            self.busy |= bool(q.isActive and q.status["isTriggerActive"])
        return self

    def batches(self) -> dict[str, int]:
        return {name: len(p) for name, p in self.progress.items()}

    def input_rows(self) -> dict[str, int]:
        return {name: sum(int(x["numInputRows"]) for x in p.values()) for name, p in self.progress.items()}

    def history(self) -> dict[str, list[dict[str, Any]]]:
        """Headline figures of every batch, per query, in batch order."""
        return {name: [_figures(p[b]) for b in sorted(p)] for name, p in self.progress.items()}

    def last(self) -> dict[str, dict[str, Any]]:
        """Headline figures of each query's last batch with input (else its last batch)."""
        out = {}
        for name, batches in self.history().items():
            if batches:
                out[name] = next((x for x in reversed(batches) if x["numInputRows"] > 0), batches[-1])
        return out


def progress_dict(progress: Any) -> dict[str, Any]:
    """A batch's progress as a dict: pyspark 3.5 gives dicts; pyspark 4 gives ``StreamingQueryProgress``, whose
    JSON lacks the computed ``numInputRows`` and rates (Spark Connect's ``p["numInputRows"]`` is None); it
    subclasses dict, so it is told apart by its attributes."""
    if not hasattr(progress, "numInputRows"):
        return progress
    return {k: getattr(progress, k) for k in (*PROGRESS_FIGURES, "durationMs")}


def _figures(progress: dict) -> dict[str, Any]:
    durations = dict(progress.get("durationMs") or {})
    return {k: progress.get(k) for k in PROGRESS_FIGURES} | {
        "triggerExecutionMs": durations.get("triggerExecution"), "durationMs": durations}


def _raise_if_failed(query: StreamingQuery) -> None:
    error = query.exception()
    if error is not None:
        raise RuntimeError(f"streaming query {query.name} failed: {error}; fix the cause and rerun (the checkpoint "
                           "under stream.checkpoint resumes where it stopped)")
