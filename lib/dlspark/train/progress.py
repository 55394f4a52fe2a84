"""Progress lines inside an epoch: step, loss, rows/s and time left, every N steps (rank 0 logs them). Pure code."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StepProgress:
    """Counts one epoch's steps; :meth:`line` says how it goes every ``every`` steps (0 = never)."""

    epoch: int
    total_steps: int                      # steps this epoch will run (the feeder's batch count, capped)
    every: int
    first_step: int = 0                   # a resumed epoch starts past its first steps
    started: float = field(default_factory=time.perf_counter)
    rows: int = 0

    def due(self, step: int, rows: int) -> bool:
        """Count ``rows`` more rows; whether a line is due after ``step`` (1-based within the epoch)."""
        self.rows += rows
        return bool(self.every) and step % self.every == 0

    def line(self, step: int, loss: float, accuracy: float) -> str:
        """How the epoch goes after ``step``: running loss and accuracy, rows/s, time left."""
        elapsed = time.perf_counter() - self.started
        done = step - self.first_step
        left = (self.total_steps - step) * elapsed / max(done, 1)
        return (f"epoch {self.epoch} step {step}/{self.total_steps}: loss {loss:.4f} acc {accuracy:.4f} (running), "
                f"{self.rows / max(elapsed, 1e-9):,.0f} rows/s, {format_seconds(left)} left in the epoch")


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    s = int(round(max(seconds, 0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
