"""Where rollout decisions and per-version metrics go: MLflow version tags, the log, and a Parquet table.

Every decision of :class:`~dlspark.serving.rollout.Rollout` is recorded three ways:

* tags on the challenger's registered version: ``dlspark.rollout.status`` (``running``, ``rolled_back``,
  ``promoted``, ``completed``), ``dlspark.rollout.decision``, ``dlspark.rollout.reason``, ``dlspark.rollout.at``
  and ``dlspark.rollout.mode`` (a restarted server reads the status: a rolled-back version gets no traffic);
* one log line at WARNING (rollback) or INFO;
* one row per version in ``serve.rollout.table`` (``event`` = the action, ``decision_seq`` its order), beside
  the periodic ``snapshot`` rows.

Decisions are recorded one at a time, in order (the app runs the recorder on one worker thread).

A ``promote`` decision also moves the champion alias to the challenger (:func:`dlspark.tracking.promote`);
a rollback leaves the champion alias where it is (the challenger never held it).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dlspark.serving.rollout import Decision, Rollout, Status
from dlspark.tables.parquet import append_arrow

if TYPE_CHECKING:
    from dlspark.tracking import TrackingTarget

log = logging.getLogger(__name__)

STATUS_TAG = "dlspark.rollout.status"
RESULT_STATUS = {"rollback": "rolled_back", "promote": "promoted", "complete": "completed", "step": "running"}

TABLE_SCHEMA = pa.schema([
    ("at", pa.timestamp("ms", tz="UTC")), ("event", pa.string()), ("decision_seq", pa.int64()), ("reason", pa.string()),
    ("model", pa.string()),
    ("arm", pa.string()), ("version", pa.string()), ("mode", pa.string()), ("status", pa.string()),
    ("challenger_share", pa.float64()), ("requests", pa.int64()), ("errors", pa.int64()), ("error_rate", pa.float64()),
    ("p50_ms", pa.float64()), ("p95_ms", pa.float64()), ("labelled", pa.int64()), ("accuracy", pa.float64()),
])


class RolloutRecorder:
    """Records decisions and metric rows for the registered model ``model_name`` in ``target``.

    ``target`` None (a model served from a ``runs:/`` URI, or tests) records to the log and table only.
    """

    def __init__(self, target: "TrackingTarget | None", model_name: str, table_uri: str | None) -> None:
        self.target, self.model_name, self.table_uri = target, model_name, table_uri

    def previous_status(self, version: str | None) -> Status:
        """The status a previous rollout left on ``version`` (``running`` when none)."""
        if self.target is None or version is None:
            return "running"
        tags = self.target.client().get_model_version(self.model_name, version).tags or {}
        status = tags.get(STATUS_TAG, "running")
        return status if status in ("running", "rolled_back", "promoted", "completed") else "running"  # type: ignore[return-value]

    def record(self, rollout: Rollout, decision: Decision) -> None:
        """Tag, log and table one decision; a promotion moves the champion alias."""
        challenger = rollout.stats["challenger"].version
        level = logging.WARNING if decision.action == "rollback" else logging.INFO
        log.log(level, "rollout %s of %s version %s (champion %s): %s; challenger share %.0f%% -> %.0f%%",
                decision.action, self.model_name, challenger, rollout.stats["champion"].version, decision.reason,
                decision.share_before * 100, decision.share_after * 100)
        if self.target is not None and challenger is not None:
            client = self.target.client()
            tags = {STATUS_TAG: RESULT_STATUS[decision.action], "dlspark.rollout.decision": decision.action,
                    "dlspark.rollout.reason": decision.reason[:4000], "dlspark.rollout.mode": rollout.cfg.mode,
                    "dlspark.rollout.at": _iso(decision.at)}
            for key, value in tags.items():
                client.set_model_version_tag(self.model_name, challenger, key, value)
            if decision.action == "promote":
                from dlspark.tracking import promote

                promote(self.target, self.model_name, challenger)
                log.info("rollout: champion alias of %s moved to version %s", self.model_name, challenger)
        self.write_rows(rollout, event=decision.action, reason=decision.reason, at=decision.at,
                        stats={"champion": decision.champion, "challenger": decision.challenger}, sequence=decision.sequence)

    def write_rows(self, rollout: Rollout, *, event: str = "snapshot", reason: str | None = None,
                   at: float | None = None, stats: dict[str, dict[str, Any]] | None = None,
                   sequence: int | None = None) -> None:
        """One row per version with a version (the challenger's only while there is one) to the table."""
        if self.table_uri is None:
            return
        snap = rollout.snapshot()
        stats = stats or snap["versions"]
        when = datetime.fromtimestamp(at, timezone.utc) if at is not None else datetime.now(timezone.utc)
        rows = [{"at": when, "event": event, "decision_seq": sequence, "reason": reason, "model": self.model_name, "arm": arm,
                 "version": s["version"], "mode": snap["mode"], "status": snap["status"],
                 "challenger_share": snap["challenger_share"], "requests": s["requests"], "errors": s["errors"],
                 "error_rate": s["error_rate"], "p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"],
                 "labelled": s["labelled"], "accuracy": s["accuracy"]}
                for arm, s in stats.items() if s["version"] is not None]
        if rows:
            append_arrow(self.table_uri, pa.Table.from_pylist(rows, TABLE_SCHEMA))


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
