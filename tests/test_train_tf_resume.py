"""Kill-and-resume for TensorFlow's MultiWorkerMirroredStrategy on local[2]: the whole job (driver, Spark, both TF
workers) SIGKILLed mid-epoch, rerun with the same run name, ends where an uninterrupted run ends and trains every
epoch exactly once (the torch loop's test, on the shared training core)."""
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

pytest.importorskip("tensorflow")

from tests.stacks import once_per_ci  # noqa: E402
from tests.test_train_tf import write_image_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 48   # 1536 train rows / 2 workers / batch 16
SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    from dlspark.train import run_training
    from tests.test_train_tf import tf_job
    job = tf_job(Path(sys.argv[1]), Path(sys.argv[2]), run_name=sys.argv[3], epochs=3, num_workers=2,
                 checkpoint_every_steps=8)
    result = run_training(job, "tf_multiworker", spark=spark)
    Path(sys.argv[4]).write_text(json.dumps(dataclasses.asdict(result)))
    spark.stop()
""")


def _start(script: Path, table: Path, ckpt: Path, run: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(table), str(ckpt), run, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env={**os.environ})


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-4000:]
    return json.loads(out.read_text())


def _mid_epoch_1(run_dir: Path) -> list[int]:
    steps = [int(m.group(1)) for p in (run_dir / "tf_ckpt").glob("ckpt-*.index") if (m := re.match(r"ckpt-(\d+)\.index$", p.name))]
    return [s for s in steps if STEPS_PER_EPOCH < s < 2 * STEPS_PER_EPOCH]


def _kill_at_mid_epoch_1(proc: subprocess.Popen, run_dir: Path, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _mid_epoch_1(run_dir)
        if found:
            os.killpg(proc.pid, signal.SIGKILL)   # driver, JVM, Python workers and both TF workers
            proc.wait(timeout=30)
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before a mid-epoch checkpoint: {proc.stdout.read()[-4000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("no mid-epoch checkpoint of epoch 1 appeared")


@pytest.mark.slow
@once_per_ci("the resume logic is the shared training core and TF's checkpoints; the barrier-task launch it goes "
             "through is tested on both stacks by test_train_tf's multi-worker test")
def test_multiworker_killed_mid_epoch_resumes_without_recounting(tmp_path):
    table = write_image_table(tmp_path / "table", {"train": 1536, "val": 64, "test": 64}, seed=5)
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    ckpt = tmp_path / "ckpt"

    victim = _start(script, table, ckpt, "victim", tmp_path / "victim.json")
    killed_at = _kill_at_mid_epoch_1(victim, ckpt / "victim")
    assert victim.returncode == -signal.SIGKILL and not (tmp_path / "victim.json").exists()
    time.sleep(1)   # the TF workers die with their tasks (PR_SET_PDEATHSIG)

    resumed = _finish(_start(script, table, ckpt, "victim", tmp_path / "victim.json"), tmp_path / "victim.json")
    expected = _finish(_start(script, table, ckpt, "baseline", tmp_path / "baseline.json"), tmp_path / "baseline.json")

    resumed_from = resumed["resumed_from"]
    assert resumed_from is not None and re.search(r"ckpt-(\d+)$", resumed_from), resumed_from
    at = int(resumed_from.rsplit("-", 1)[1])
    assert at >= killed_at and at % 8 == 0 and at < 3 * STEPS_PER_EPOCH
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert [h["steps"] for h in resumed["history"]] == [h["steps"] for h in expected["history"]] == [STEPS_PER_EPOCH] * 3
    assert resumed["timing"]["train_steps"] == 3 * STEPS_PER_EPOCH - at   # only what was left, nothing twice
    for key in ("train_loss", "val_loss", "val_accuracy"):
        got, want = resumed["history"][-1][key], expected["history"][-1][key]
        assert abs(got - want) <= 0.02 * max(abs(want), 1e-2), (key, got, want)
    assert resumed["test_metrics"]["test_count"] == 64
    assert abs(resumed["test_metrics"]["test_accuracy"] - expected["test_metrics"]["test_accuracy"]) <= 0.02
