"""Replay messages as JSON-line files into a folder at a fixed rate: the input of the streaming job.

Pure code (no Spark). One file per tick holding ``rate * tick_s`` lines; each file is written under a
hidden name (``.<name>.tmp``, which Spark's file source skips) and renamed into place, so the stream
never sees a partial file. Optionally a fraction of the lines is malformed (one of :data:`MALFORMED`),
to exercise the quarantine.
"""
from __future__ import annotations

import csv
import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

# Lines the streaming job must quarantine, by the reason it gives (see dlspark.inference.streaming).
MALFORMED = {
    "malformed_json": '{"id": "bad-{n}", "text": "unterminated',
    "missing_id": '{"text": "a message without an id {n}", "created_at": "2024-01-01T00:00:00Z"}',
    "empty_text": '{"id": "empty-{n}", "text": "   ", "created_at": "2024-01-01T00:00:00Z"}',
    "bad_event_time": '{"id": "time-{n}", "text": "when was this {n}", "created_at": "yesterday-ish"}',
}
_POSITIVE = ("I love this {n}", "what a great day {n}", "this is wonderful, thank you {n}")
_NEGATIVE = ("I hate this {n}", "what an awful day {n}", "this is terrible, no thanks {n}")


@dataclass(frozen=True)
class ReplaySpec:
    """Pace and shape of a replay: ``rate`` messages/s in one file per ``tick_s`` seconds."""

    rate: float
    tick_s: float = 1.0
    malformed_fraction: float = 0.0
    seed: int = 0
    prefix: str = "replay"                  # file names: <prefix>-<tick:06d>.jsonl

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.tick_s <= 0:
            raise ValueError(f"rate and tick_s must be > 0, got rate={self.rate} tick_s={self.tick_s}")
        if not 0.0 <= self.malformed_fraction < 1.0:
            raise ValueError(f"malformed_fraction must be in [0, 1), got {self.malformed_fraction}")

    @property
    def per_file(self) -> int:
        return max(1, round(self.rate * self.tick_s))


@dataclass
class ReplayReport:
    """What was written: files, lines, the ids of the valid messages, and malformed lines by reason."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    ids: list[str] = field(default_factory=list)
    malformed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def synthetic_messages(n: int, *, start: datetime, spacing_s: float = 1.0, id_prefix: str = "m") -> Iterator[dict]:
    """``n`` short labelled messages, alternately positive and negative, ``spacing_s`` apart in event time."""
    for i in range(n):
        positive = i % 2 == 0
        text = (_POSITIVE if positive else _NEGATIVE)[i // 2 % 3].format(n=i)
        yield message(f"{id_prefix}{i:07d}", text, start + timedelta(seconds=i * spacing_s),
                      "positive" if positive else "negative")


def tweet_messages(csv_path: Path, *, start: datetime, spacing_s: float, limit: int | None = None,
                   id_prefix: str = "t", shuffle_seed: int | None = 0) -> Iterator[dict]:
    """The labelled tweets CSV (``sentiment,confidence,text``) as messages, ``spacing_s`` apart in event time.

    The CSV is sorted by label, so rows are shuffled with ``shuffle_seed`` (None keeps file order); ids number
    the messages in replay order.
    """
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    for i, row in enumerate(rows[:limit] if limit is not None else rows):
        yield message(f"{id_prefix}{i:07d}", row["text"], start + timedelta(seconds=i * spacing_s), row["sentiment"])


def message(id_: str, text: str, created_at: datetime, label: str | None = None) -> dict:
    """One message as the stream reads it (``created_at`` ISO-8601 UTC with milliseconds)."""
    stamp = created_at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"id": id_, "created_at": stamp, "text": text, "label": label}


def replay(messages: Iterable[dict], out_dir: Path, spec: ReplaySpec, *, pace: bool = True,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
           max_seconds: float | None = None) -> ReplayReport:
    """Write ``messages`` into ``out_dir``, ``spec.per_file`` lines per file, one file per tick.

    With ``pace`` the ticks are ``spec.tick_s`` apart on ``clock`` (absolute schedule, so a slow write does not
    slow the rate); ``max_seconds`` stops after that long. Each line is malformed with probability
    ``spec.malformed_fraction`` (drawn from ``spec.seed``), cycling through :data:`MALFORMED`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng, reasons = random.Random(spec.seed), list(MALFORMED)
    report, start = ReplayReport(), clock()
    for tick, chunk in enumerate(_chunks(messages, spec.per_file)):
        if max_seconds is not None and clock() - start >= max_seconds:
            break
        lines: list[str] = []
        for msg in chunk:
            if rng.random() < spec.malformed_fraction:
                reason = reasons[sum(report.malformed.values()) % len(reasons)]
                lines.append(MALFORMED[reason].replace("{n}", str(report.lines + len(lines))))
                report.malformed[reason] = report.malformed.get(reason, 0) + 1
            else:
                lines.append(json.dumps(msg, ensure_ascii=False))
                report.ids.append(str(msg["id"]))
        report.files.append(str(write_atomic(out_dir / f"{spec.prefix}-{tick:06d}.jsonl", lines)))
        report.lines += len(lines)
        if pace:
            sleep(max(0.0, start + (tick + 1) * spec.tick_s - clock()))
    report.seconds = clock() - start
    return report


def write_atomic(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` to a hidden temp file beside ``path``, then rename it into place."""
    if path.exists():
        raise FileExistsError(f"{path} exists: replay into an empty folder or pick another --prefix")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _chunks(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
