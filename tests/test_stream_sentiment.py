"""Streaming sentiment: replay generator, message parsing and quarantine reasons, exactly-once across a kill -9,
and windowed aggregates."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dlspark.config import ConfigError, load_config
from dlspark.datasets.replay import MALFORMED, ReplaySpec, message, replay, synthetic_messages
from tests.conftest import REPO
from tests.stacks import child_connect

pytestmark = pytest.mark.connect  # also run over Spark Connect (make test-connect)

START = datetime(2024, 1, 1, tzinfo=timezone.utc)


# ---- replay generator (pure) ------------------------------------------------------------------------------------

def test_replay_writes_one_file_per_tick_atomically(tmp_path):
    report = replay(synthetic_messages(25, start=START), tmp_path, ReplaySpec(rate=10, tick_s=1.0), pace=False)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["replay-000000.jsonl", "replay-000001.jsonl", "replay-000002.jsonl"]
    lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert [len(f.read_text().splitlines()) for f in files] == [10, 10, 5]
    assert [m["id"] for m in lines] == report.ids == [f"m{i:07d}" for i in range(25)]
    assert lines[3]["created_at"] == "2024-01-01T00:00:03.000Z" and lines[0]["label"] == "positive"
    assert report.lines == 25 and report.malformed == {}


def test_replay_paces_ticks_on_an_absolute_schedule(tmp_path):
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(round(s, 6))
        now[0] += s

    def clock() -> float:
        now[0] += 0.25          # each write + check takes 0.25 s of "time"
        return now[0]

    replay(synthetic_messages(6, start=START), tmp_path, ReplaySpec(rate=2, tick_s=1.0), pace=True, sleep=sleep, clock=clock)
    assert sleeps == [0.75, 0.75, 0.75]   # the write time is taken out of each tick: the rate holds at 2 msg/s


def test_replay_malformed_fraction_and_refuses_to_overwrite(tmp_path):
    spec = ReplaySpec(rate=50, malformed_fraction=0.2, seed=3)
    report = replay(synthetic_messages(200, start=START), tmp_path, spec, pace=False)
    lines = [x for f in sorted(tmp_path.iterdir()) for x in f.read_text().splitlines()]
    good = {json.dumps(m) for m in synthetic_messages(200, start=START)}
    assert len(lines) == 200 and [json.loads(x)["id"] for x in lines if x in good] == report.ids
    assert 20 < sum(report.malformed.values()) < 60 and set(report.malformed) == set(MALFORMED)
    assert len([x for x in lines if x not in good]) == sum(report.malformed.values())
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(FileExistsError, match="--prefix"):
        replay(synthetic_messages(5, start=START), tmp_path, spec, pace=False)


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": 1, "tick_s": 0}, {"rate": 1, "malformed_fraction": 1.0}])
def test_replay_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ReplaySpec(**kwargs)


# ---- parsing and quarantine reasons (Spark, batch DataFrames) ------------------------------------------------------

LINES = {
    json.dumps(message("a1", "good text", START, "positive")): None,
    '{"id": 7, "text": "numeric id is fine"}': None,
    '{"id": "a2", "text": "unterminated': "malformed_json",
    "[1, 2, 3]": "malformed_json",
    "42": "malformed_json",
    "   ": "blank_line",
    '{"text": "no id"}': "missing_id",
    '{"id": "", "text": "empty id"}': "missing_id",
    '{"id": "a3"}': "missing_text",
    '{"id": "a4", "text": " \\t "}': "empty_text",
    '{"id": "a5", "text": "x", "created_at": "not a time"}': "bad_event_time",
}


def test_parse_messages_gives_each_bad_line_its_reason(spark, ansi_mode):
    from dlspark.inference.streaming import MessageFields, parse_messages, quarantined_lines, valid_messages

    raw = spark.createDataFrame([(line, START.replace(tzinfo=None), "f") for line in LINES],
                                "raw string, arrival_time timestamp, source string")
    parsed = parse_messages(raw, MessageFields())
    reasons = {r["raw"]: r["reason"] for r in parsed.collect()}
    assert reasons == LINES
    valid = {r["id"]: r for r in valid_messages(parsed).collect()}
    assert set(valid) == {"a1", "7"}
    assert valid["a1"]["event_time"] == START.replace(tzinfo=None) and valid["a1"]["label"] == "positive"
    assert valid["7"]["event_time"] == START.replace(tzinfo=None)      # no created_at: the arrival time
    assert quarantined_lines(parsed).count() + len(valid) == len(LINES)


def test_kafka_source_without_connector_says_what_to_add(spark):
    from dlspark.inference.streaming import read_kafka_source

    with pytest.raises(ConfigError, match="spark-sql-kafka-0-10"):
        read_kafka_source(spark, "localhost:9092", "tweets")


def test_a_remote_connect_server_is_refused_at_start_with_what_works(spark, monkeypatch):
    from pipelines import stream_sentiment as job

    job.check_stream_session(spark)  # the test session (classic, or Connect in this process) can stream
    monkeypatch.setattr(job, "is_connect", lambda session: True)
    monkeypatch.setattr(job, "executors_share_files", lambda session: False)
    with pytest.raises(ConfigError, match="Run the stream with spark-submit"):
        job.check_stream_session(spark)


def test_delta_format_is_rejected_with_the_fix():
    from pipelines.stream_sentiment import RunMode, check_stream_config

    with pytest.raises(ConfigError, match="stream.format: parquet"):
        check_stream_config(load_config(overrides=["stream.format=delta"]))
    with pytest.raises(ConfigError, match="not both"):
        RunMode(until_idle_s=5, available_now=True)


# ---- end to end (slow) ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """A data_dir whose embedded MLflow holds test-sentiment@champion (MiniLM, labels negative/positive)."""
    from tests.inference_models import register_text_model

    data_dir = tmp_path_factory.mktemp("stream")
    register_text_model(data_dir)
    return data_dir


def _job(data_dir: Path, log: Path) -> subprocess.Popen:
    sets = [f"paths.data_dir={data_dir}", "mlflow.registered_model=test-sentiment", "stream.max_files_per_trigger=1",
            "stream.trigger_seconds=0.5", "stream.side_trigger_seconds=0.5", "spark.master=local[2]", "spark.driver_memory=1g",
            "spark.shuffle_partitions=2", "spark.arrow_max_records_per_batch=64"]
    cmd = [sys.executable, "jobs/stream_sentiment.py", "--pipeline", "sentiment", "--until-idle", "4"]
    cmd += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYSPARK_PYTHON": sys.executable}
    cmd += [x for s in child_connect(env) for x in ("--set", s)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _committed_batches(sink: Path) -> int:
    log = sink / "_spark_metadata"
    return len([p for p in log.iterdir() if p.name.split(".")[0].isdigit()]) if log.is_dir() else 0


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


@pytest.mark.slow
def test_kill_and_restart_writes_every_line_exactly_once(spark, model_store, tmp_path):
    landing = model_store / "landing" / "stream"
    written = replay(synthetic_messages(300, start=START, spacing_s=1), landing,
                     ReplaySpec(rate=60, malformed_fraction=0.08, seed=1), pace=False)
    lines = [x for f in written.files for x in Path(f).read_text().splitlines()]
    sink = model_store / "tables" / "stream" / "predictions"
    first = _job(model_store, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    while _committed_batches(sink) == 0:
        assert first.poll() is None, f"the job exited before its first batch:\n{_tail(tmp_path / 'first.log')}"
        assert time.monotonic() < deadline, f"no batch committed in 240 s:\n{_tail(tmp_path / 'first.log')}"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)        # the driver, its JVM and Python workers: nothing shuts down cleanly
    first.wait()
    done = _committed_batches(sink)
    assert done < len(written.files), "every batch finished before the kill: the restart would test nothing"

    second = _job(model_store, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, _tail(tmp_path / "second.log")
    predicted = Counter(r["id"] for r in spark.read.parquet(str(sink)).select("id").collect())
    quarantined = Counter(r["raw"] for r in spark.read.parquet(str(sink.parent / "quarantine")).collect())
    valid_lines = {json.dumps(m) for m in synthetic_messages(300, start=START, spacing_s=1)}
    assert predicted == Counter(written.ids)                      # each valid id once: none lost, none twice
    assert quarantined == Counter(x for x in lines if x not in valid_lines)
    assert sum(predicted.values()) + sum(quarantined.values()) == len(lines) == 300
    assert "reconciled" in _tail(tmp_path / "second.log")


@pytest.mark.slow
def test_window_counts_sum_to_predictions_in_closed_windows(spark, model_store):
    from pipelines.stream_sentiment import RunMode, stream_sentiment

    root = "runs/aggregates"
    cfg = load_config(pipeline="sentiment", overrides=[
        f"paths.data_dir={model_store}", "mlflow.registered_model=test-sentiment", f"stream.input={root}/in",
        f"stream.output={root}/predictions", f"stream.quarantine={root}/quarantine", f"stream.aggregates={root}/agg",
        f"stream.checkpoint={root}/checkpoints", "stream.trigger_seconds=0.5", "stream.side_trigger_seconds=0.5", "stream.window=1 minute",
        "stream.watermark=2 minutes"])
    messages = list(synthetic_messages(120, start=START, spacing_s=2))           # 4 minutes, 30 per window
    late = message("late", "moves the watermark to 00:08", START + timedelta(minutes=10), "positive")
    replay([*messages, late], model_store / root / "in", ReplaySpec(rate=200), pace=False)

    report = stream_sentiment(spark, cfg, "test", RunMode(until_idle_s=5))

    windows = spark.read.parquet(str(model_store / root / "agg")).orderBy("window_start").collect()
    assert [(w["window_start"].minute, w["messages"], w["predicted"]) for w in windows] == [(m, 30, 30) for m in range(4)]
    assert report.predicted == 121 and report.windows == 4 and report.reconciled
    predictions = spark.read.parquet(str(model_store / root / "predictions")).where("id != 'late'").collect()
    for w in windows:
        inside = [p["probabilities"][1] for p in predictions if w["window_start"] <= p["event_time"] < w["window_end"]]
        assert w["mean_positive_probability"] == pytest.approx(sum(inside) / len(inside), rel=1e-5)
