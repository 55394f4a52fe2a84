"""Step lines inside an epoch (pure)."""
from __future__ import annotations

from dlspark.train.progress import StepProgress, format_seconds


def test_a_line_every_n_steps_with_rate_and_time_left():
    progress = StepProgress(epoch=2, total_steps=10, every=4, started=0.0)
    due = [progress.due(step, 8) for step in range(1, 9)]
    assert due == [False, False, False, True, False, False, False, True]
    assert progress.rows == 64


def test_line_reports_the_rate_and_extrapolates_the_rest_of_the_epoch(monkeypatch):
    import dlspark.train.progress as module

    monkeypatch.setattr(module.time, "perf_counter", lambda: 100.0)
    progress = StepProgress(epoch=1, total_steps=100, every=10, first_step=20, started=60.0)   # resumed at step 20
    progress.due(30, 1280)
    line = progress.line(30, 0.25, 0.9)   # 10 steps in 40 s: 70 steps left take 280 s
    assert line == "epoch 1 step 30/100: loss 0.2500 acc 0.9000 (running), 32 rows/s, 4m40s left in the epoch"


def test_zero_means_no_lines_and_seconds_read_naturally():
    assert not any(StepProgress(epoch=0, total_steps=5, every=0).due(s, 1) for s in range(1, 6))
    assert [format_seconds(s) for s in (0, 12.4, 245, 3720, -3)] == ["0s", "12s", "4m05s", "1h02m", "0s"]
