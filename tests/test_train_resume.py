"""Kill-and-resume: a training process SIGKILLed mid-epoch, rerun with the same run name, ends where an
uninterrupted run ends (final metrics within 1%) and trains every epoch exactly once."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.test_train_loop import REPO, write_image_table

# The worker: the same job as the test builds; DLSPARK_TEST_STEP_DELAY slows each batch so the test can kill it.
SCRIPT = textwrap.dedent("""
    import dataclasses, json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import torch
    torch.set_num_threads(1)
    from dlspark.train import run_training, steps
    from tests.test_train_loop import image_job

    delay = float(os.environ.get("DLSPARK_TEST_STEP_DELAY", "0"))
    real_open = steps.open_batches

    class Slow:
        def __init__(self, cm):
            self.cm = cm
        def __enter__(self):
            return (time.sleep(delay) or b for b in self.cm.__enter__())
        def __exit__(self, *exc):
            return self.cm.__exit__(*exc)

    steps.open_batches = lambda spec, **kw: Slow(real_open(spec, **kw))
    job = image_job(Path(sys.argv[1]), Path(sys.argv[2]), run_name=sys.argv[3], epochs=3, checkpoint_every_steps=4,
                    noisy=True)
    result = run_training(job, "local")
    Path(sys.argv[4]).write_text(json.dumps(dataclasses.asdict(result)))
""")
MID_EPOCH_1 = re.compile(r"ckpt-e00001-s0*[1-9]\d*\.pt$")


def _start(script: Path, table: Path, ckpt: Path, run: str, out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "DLSPARK_TEST_STEP_DELAY": str(delay), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(table), str(ckpt), run, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-3000:]
    return json.loads(out.read_text())


def _wait_for_mid_epoch_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p.name for p in run_dir.glob("ckpt-*.pt") if MID_EPOCH_1.search(p.name)]
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before a mid-epoch checkpoint: {proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no mid-epoch checkpoint of epoch 1 appeared")


def test_killed_mid_epoch_resumes_without_recounting(tmp_path):
    table = write_image_table(tmp_path / "table", {"train": 256, "val": 64, "test": 64}, seed=3, noise=True)
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    ckpt = tmp_path / "ckpt"

    baseline = _start(script, table, ckpt, "baseline", tmp_path / "baseline.json", delay=0.0)
    victim = _start(script, table, ckpt, "victim", tmp_path / "victim.json", delay=0.25)
    killed_at = _wait_for_mid_epoch_checkpoint(victim, ckpt / "victim")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "victim.json").exists()
    expected = _finish(baseline, tmp_path / "baseline.json")

    resumed = _finish(_start(script, table, ckpt, "victim", tmp_path / "victim.json", delay=0.0), tmp_path / "victim.json")

    resumed_from = resumed["resumed_from"]
    assert resumed_from is not None and re.search(r"ckpt-e0000[12]-s\d+\.pt$", resumed_from), (killed_at, resumed_from)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert [h["steps"] for h in resumed["history"]] == [h["steps"] for h in expected["history"]] == [16, 16, 16]
    assert resumed["timing"]["train_steps"] < 3 * 16  # the resumed process trained only what was left
    for key in ("train_loss", "val_loss", "val_accuracy"):
        got, want = resumed["history"][-1][key], expected["history"][-1][key]
        assert abs(got - want) <= 0.01 * max(abs(want), 1e-3), (key, got, want)
    assert abs(resumed["test_metrics"]["test_accuracy"] - expected["test_metrics"]["test_accuracy"]) <= 0.01
    # the interrupted epoch's train metrics include the batches done before the kill (partial sums restored)
    assert abs(resumed["history"][1]["train_loss"] - expected["history"][1]["train_loss"]) <= 0.01 * expected["history"][1]["train_loss"]
