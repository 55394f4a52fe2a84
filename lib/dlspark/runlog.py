"""Run identity, structured logging, per-stage progress lines and the JSON run summary. Pure code."""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from dlspark.config import RunConfig
from dlspark.filesystem import read_text, write_text

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """Sortable, unique run id: UTC timestamp plus 6 random hex digits."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class _RunIdFilter(logging.Filter):
    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, run_id, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "run_id": getattr(record, "run_id", None),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


OWN_LOGGERS = ("dlspark", "pipelines", "jobs", "__main__", "bench")


def setup_logging(cfg: RunConfig, run_id: str) -> None:
    """Configure logging once per process: format and the run id on every line; dlspark's loggers at
    ``run.log_level``, every other library (and lines logged on the root logger) at ``run.library_log_level``."""
    handler = logging.StreamHandler()
    handler.addFilter(_RunIdFilter(run_id))
    if cfg.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(run_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(cfg.library_log_level)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(cfg.log_level)
    for noisy in ("py4j", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_self_configured_libraries(cfg.library_log_level)


# Libraries that give their own logger a handler and a level on import (so the root level does not reach them),
# and the environment variable each reads for that level at import time.
SELF_CONFIGURED_LOGGERS = {"mlflow": "MLFLOW_LOGGING_LEVEL"}


def quiet_self_configured_libraries(level: str) -> None:
    """Hold MLflow's own logger (and the like) to ``level``: now if it is already imported, and through its
    environment variable if it is imported later. A level the user set in that variable is kept."""
    for name, env in SELF_CONFIGURED_LOGGERS.items():
        chosen = os.environ.setdefault(env, level)
        logging.getLogger(name).setLevel(chosen.upper())


@dataclass
class StageTimings:
    """Seconds per named stage, in the order they ran (``seconds``: rounded to ms for reports)."""

    raw: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.raw.items()}

    def add(self, name: str, seconds: float) -> None:
        self.raw[name] = self.raw.get(name, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)


_TASK_TIMINGS: list[StageTimings] = []  # the worker-side stages of the Spark task running in this process


@contextmanager
def task_timings() -> Iterator[StageTimings]:
    """Collect the seconds that :func:`task_stage` blocks spend inside this block (one Spark task's body)."""
    timings = StageTimings()
    _TASK_TIMINGS.append(timings)
    try:
        yield timings
    finally:
        _TASK_TIMINGS.remove(timings)


@contextmanager
def task_stage(name: str) -> Iterator[None]:
    """Time a worker-side step (read, decode, hash, write) into the enclosing :func:`task_timings`; outside
    one (a unit test, a driver-side call) it only runs the block."""
    if not _TASK_TIMINGS:
        yield
        return
    with _TASK_TIMINGS[-1].stage(name):
        yield


def log_progress(stage: str, *, rows: int, seconds: float, quarantined: int = 0, unit: str = "rows") -> None:
    """One progress line per stage: throughput, rows and quarantined count."""
    rate = rows / seconds if seconds > 0 else float("nan")
    log.info("stage %s: %d %s in %.1fs (%.1f %s/s), %d quarantined", stage, rows, unit, seconds, rate, unit, quarantined)


def write_json(uri: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as pretty JSON to a local path or any URI, atomically where the filesystem allows."""
    write_text(uri, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(uri: str) -> dict[str, Any] | None:
    """Read a JSON file written by :func:`write_json`; ``None`` when it does not exist."""
    text = read_text(uri)
    return None if text is None else json.loads(text)
