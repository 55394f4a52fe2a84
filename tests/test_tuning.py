"""Hyperparameter search: search-space parsing and validation (pure), and a study whose trials run as Spark
tasks, each a nested MLflow run, with the best params written back as a config layer.

The Spark test tunes on a tiny dark-vs-bright image table (ingested through the real pipeline), 4 trials two at a
time, 1 epoch of 3 steps each; one trial is enqueued with a weight decay the optimizer rejects, so it must fail
while the others complete.
"""
from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml

from dlspark.config import ConfigError, load_config
from dlspark.tuning import apply_params, nest, suggest, validate_space, write_best_yaml
from dlspark.tuning import study as studies
from tests.image_zoo import separable_images, write_tree

pytestmark = pytest.mark.connect  # also run over Spark Connect (make test-connect)

SPACE = ("tune.space={lr: {type: loguniform, low: 1e-3, high: 1e-1}, weight_decay: {type: float, low: 0, high: 0.01},"
         " optimizer: {type: categorical, choices: [adamw, sgd]}, feed.batch_size: {type: int, low: 4, high: 16, step: 4}}")


def _cfg(*sets: str, data_dir: Path | None = None):
    base = [f"paths.data_dir={data_dir}"] if data_dir else []
    return load_config(pipeline="image_classification", overrides=[*base, SPACE, *sets])


# ---------------------------------------------------------------- pure: space, validation, write-back

def test_space_parses_and_suggests_within_ranges():
    cfg = _cfg()
    assert cfg.tune.space["lr"].low == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; the schema makes it a float
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [suggest(study.ask(), cfg.tune.space) for _ in range(20)]
    assert all(1e-3 <= d["lr"] <= 1e-1 and 0 <= d["weight_decay"] <= 0.01 for d in drawn)
    assert {d["optimizer"] for d in drawn} == {"adamw", "sgd"}
    assert {d["feed.batch_size"] for d in drawn} <= {4, 8, 12, 16} and len({d["lr"] for d in drawn}) == 20


def test_params_become_a_validated_train_config_with_trial_caps():
    cfg = _cfg("tune.epochs=2", "tune.limit_rows=50", "tune.max_steps_per_epoch=3")
    train = apply_params(cfg.train, {"lr": 0.05, "feed.batch_size": 8}, cfg.tune, backend="local", run_name="t-1")
    assert (train.lr, train.feed.batch_size, train.epochs, train.limit_rows, train.max_steps_per_epoch) == (0.05, 8, 2, 50, 3)
    assert train.feed.shuffle_buffer == cfg.train.feed.shuffle_buffer and train.run_name == "t-1"
    with pytest.raises(ConfigError, match=r"train\.feed\.batch_size"):
        apply_params(cfg.train, {"feed.batch_size": 0})


@pytest.mark.parametrize("space, message", [
    ("{lrate: {type: float, low: 0.1, high: 1}}", r"tune\.space\.lrate: not a tunable train\.\* key; use one of .*'lr'"),
    ("{backend: {type: categorical, choices: [local, horovod]}}", r"tune\.space\.backend: not a tunable"),
    ("{lr: {type: loguniform, low: 0, high: 1}}", r"tune\.space\.lr: a log range needs low > 0"),
    ("{lr: {type: float, low: 0.1, high: 0.01}}", r"tune\.space\.lr: low \(0.1\) must be < high"),
    ("{optimizer: {type: categorical}}", r"tune\.space\.optimizer: categorical needs a non-empty choices"),
])
def test_bad_space_is_rejected_when_config_loads(space, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[f"tune.space={space}"])


@pytest.mark.parametrize("space, message", [
    ("{optimizer: {type: categorical, choices: [adamw, adam]}}", r"tune\.space\.optimizer: 'adam' is not a value"),
    ("{epochs: {type: float, low: 1, high: 3}}", r"tune\.space\.epochs: 1\.0 is not a value.*expected int"),
    ("{lr: {type: int, low: 1, high: 2.5}}", r"tune\.space\.lr: an int range needs whole low/high"),
    ("{}", r"tune\.space is empty"),
])
def test_space_values_training_rejects_fail_before_any_trial(space, message):
    cfg = load_config(overrides=[f"tune.space={space}"])
    with pytest.raises(ConfigError, match=message):
        validate_space(cfg.train, cfg.tune)


def test_best_yaml_is_a_config_layer_for_training(tmp_path):
    params = {"lr": 0.0123, "optimizer": "sgd", "feed.batch_size": 32}
    assert nest(params) == {"lr": 0.0123, "optimizer": "sgd", "feed": {"batch_size": 32}}
    path = write_best_yaml(tmp_path / "best.yaml", params, header="study s: trial 3")
    assert path.read_text().startswith("# study s: trial 3\n")
    cfg = load_config(pipeline="image_classification", extra_files=[str(path)])
    assert (cfg.train.lr, cfg.train.optimizer, cfg.train.feed.batch_size, cfg.train.epochs) == (0.0123, "sgd", 32, 8)


def test_resumed_study_counts_reported_trials_and_closes_stale_ones(tmp_path):
    cfg = _cfg("tune.n_trials=3", "tune.study=resume", data_dir=tmp_path)
    study = studies.open_study(cfg)
    assert studies.storage_url(cfg) == f"sqlite:///{tmp_path / 'tuning' / 'resume'}.db"
    done = study.ask()
    done.set_user_attr("seconds", 1.0)
    study.tell(done, state=optuna.trial.TrialState.FAIL)  # a reported failure counts as done
    studies.fail_interrupted(study, [study.ask()], "interrupted")  # Ctrl-C: closed, but runs again
    study.ask()  # left RUNNING, as by a killed driver
    again = studies.open_study(cfg)
    assert studies.close_stale(again) == 1 and studies.remaining(again, 3) == 2
    assert [t.state.name for t in again.trials] == ["FAIL", "FAIL", "FAIL"]
    with pytest.raises(ConfigError, match="created to maximize but train.monitor='val_loss'"):
        studies.open_study(_cfg("tune.study=resume", "train.monitor=val_loss", data_dir=tmp_path))


class _FakeContext:
    """Just enough SparkContext for ``run_trials``' job group; calls are recorded."""

    defaultParallelism = 4

    def __init__(self) -> None:
        self.calls = []

    def setJobGroup(self, group, description, interruptOnCancel=False):  # noqa: N802, N803
        self.calls.append(("setJobGroup", group, interruptOnCancel))

    def cancelJobGroup(self, group):  # noqa: N802
        self.calls.append(("cancelJobGroup", group))

    def setLocalProperty(self, key, value):  # noqa: N802
        self.calls.append(("setLocalProperty", key, value))


class _FailingFrame:
    """The trials DataFrame, whose ``collect`` raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def collect(self):
        raise self.error


def _fake_session(sc):
    from types import SimpleNamespace

    return SimpleNamespace(sparkContext=sc, conf=SimpleNamespace(get=lambda key, default=None: {"spark.task.cpus": "2"}.get(key, default)))


def _tasks(n: int):
    from dlspark.tuning.trial import TrialContext, TrialTask

    cfg = _cfg()
    ctx = TrialContext(cfg.train, cfg.tune, {}, ("a", "b"), "/tmp/ckpt", "s", "sqlite:///x.db", "0", "parent")
    return [TrialTask(i, {"lr": 0.01 * (i + 1)}, ctx) for i in range(n)]


def test_interrupt_cancels_the_trials_job_group_and_a_lost_job_fails_its_trials(monkeypatch):
    from dlspark.tuning import spark_trials
    from dlspark.tuning.spark_trials import run_trials, task_slots

    sc = _FakeContext()
    assert task_slots(_fake_session(sc)) == 2  # 4 cores / spark.task.cpus 2
    monkeypatch.setattr(spark_trials, "trials_frame", lambda spark, tasks, trial: _FailingFrame(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run_trials(_fake_session(sc), _tasks(2), group="g1")
    assert sc.calls[0] == ("setJobGroup", "g1", True) and ("cancelJobGroup", "g1") in sc.calls
    assert sc.calls[-1] == ("setLocalProperty", "spark.jobGroup.id", None)  # the group ends with the call
    lost = _FakeContext()
    monkeypatch.setattr(spark_trials, "trials_frame", lambda spark, tasks, trial: _FailingFrame(RuntimeError("executor lost")))
    outcomes = run_trials(_fake_session(lost), _tasks(3), group="g2")
    assert [o.number for o in outcomes] == [0, 1, 2] and all(o.failed and "executor lost" in o.error for o in outcomes)
    assert not any(c[0] == "cancelJobGroup" for c in lost.calls)


def test_trials_frame_runs_one_trial_per_task(spark):
    from dlspark.tuning.spark_trials import run_trials

    def fake_trial(task):  # nested, so it travels by value to the Python workers
        from dlspark.tuning.results import TrialOutcome
        from dlspark.tuning.trial import task_location

        return TrialOutcome(task.number, float(task.number), dict(task.params), where=task_location())

    outcomes = run_trials(spark, _tasks(3), group="g3", trial=fake_trial)
    assert [o.value for o in outcomes] == [0.0, 1.0, 2.0]
    assert sorted(o.where["partition"] for o in outcomes) == [0, 1, 2]  # one Spark task each


# ---------------------------------------------------------------- Spark: trials on executors, MLflow, resume

@pytest.fixture(scope="module")
def image_root(spark, tmp_path_factory) -> Path:
    from pipelines.ingest_images import ingest_images

    root = tmp_path_factory.mktemp("tuning")
    write_tree(root / "landing", separable_images(24))
    cfg = load_config(overrides=[f"paths.data_dir={root}", "ingest_images.input=landing", "ingest_images.size=[12,12]",
                                 "ingest_images.color_mode=L", "ingest_images.resize=stretch",
                                 "ingest_images.split={train: 0.6, val: 0.2, test: 0.2, salt: ''}"])
    assert ingest_images(spark, cfg, "ingest-1").counts.written == 48
    return root


def _tune_sets(root: Path) -> list[str]:
    return [f"paths.data_dir={root}", "train.table=tables/images", "train.warmup_epochs=0", "train.feed.shuffle_buffer=32",
            "tune.study=tiny", "tune.n_trials=4", "tune.parallelism=2", "tune.epochs=1", "tune.max_steps_per_epoch=3",
            "mlflow.experiment=tune-test"]


@pytest.mark.filterwarnings("ignore:Fixed parameter weight_decay with value -1.0 is out of range")
def test_trials_run_on_executors_as_nested_runs_and_best_is_written_back(spark, image_root, monkeypatch, capsys):
    from pipelines.tune import tune_model

    sets = _tune_sets(image_root)
    cfg = _cfg(*sets)
    studies.open_study(cfg).enqueue_trial({"weight_decay": -1.0})  # the optimizer rejects it: trial 0 must fail
    report = tune_model(spark, cfg, "tune-1")
    assert report.new_trials == 4 and [t["state"] for t in report.trials].count("COMPLETE") == 3
    assert report.trials[0]["state"] == "FAIL" and "weight_decay" in report.trials[0]["error"]

    from dlspark.tracking import resolve_tracking

    client = resolve_tracking(cfg.mlflow, cfg.paths.data_dir).client()
    children = client.search_runs([client.get_experiment_by_name("tune-test").experiment_id],
                                  f"tags.mlflow.parentRunId = '{report.parent_run_id}'")
    assert len(children) == 4
    by_trial = {int(r.data.tags["dlspark.tune.trial"]): r for r in children}
    assert by_trial[0].info.status == "FAILED" and "weight_decay" in by_trial[0].data.tags["dlspark.tune.error"]
    assert len({r.data.params["lr"] for r in children}) == 4 and {"optimizer", "feed.batch_size"} <= set(children[0].data.params)
    complete = {n: r for n, r in by_trial.items() if n != 0}
    assert all(r.info.status == "FINISHED" and "objective" in r.data.metrics and "val_accuracy" in r.data.metrics
               for r in complete.values())
    pids = {int(r.data.tags["dlspark.tune.pid"]) for r in children}
    assert os.getpid() not in pids and {r.data.tags["dlspark.tune.partition"] for r in children} <= {"0", "1"}

    best_value = max(r.data.metrics["objective"] for r in complete.values())
    best_number = report.best_number  # ties (several trials at val accuracy 1.0) go to the first
    assert complete[best_number].data.metrics["objective"] == pytest.approx(best_value) == report.best_value
    best = yaml.safe_load(Path(report.best_yaml).read_text())["train"]
    from dlspark.tables import read_table

    trials = {r["number"]: r for r in read_table(spark, str(Path(report.best_yaml).parent / "trials"), fmt="parquet").df.collect()}
    assert sorted(trials) == [0, 1, 2, 3] and trials[0]["state"] == "FAIL" and "weight_decay" in trials[0]["error"]
    assert trials[best_number]["value"] == pytest.approx(report.best_value) and trials[best_number]["mlflow_run_id"]
    assert best["lr"] == pytest.approx(float(by_trial[best_number].data.params["lr"]))
    assert best["feed"]["batch_size"] == int(by_trial[best_number].data.params["feed.batch_size"])
    parent = client.get_run(report.parent_run_id)
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(complete[best_number].data.metrics["objective"])
    assert parent.data.params["best.lr"] == by_trial[best_number].data.params["lr"]

    # Rerun through the job with the same study: nothing left to run, same parent run, same best.
    import dlspark.spark.session
    from jobs.tune import main

    monkeypatch.setattr(dlspark.spark.session, "build_spark_session", lambda _cfg: spark)
    argv = ["--pipeline", "image_classification", *[a for s in [*sets, SPACE] for a in ("--set", s)]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "study tiny: 0 new trials, 4 in all (1 failed)" in out and f"best trial {best_number}:" in out
    assert "error: ValueError: Invalid weight_decay value: -1.0" in out
    assert len(client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{report.parent_run_id}'")) == 4


def test_study_where_every_trial_fails_is_a_clear_error(spark, image_root):
    from pipelines.tune import TuneFailed, tune_model

    cfg = _cfg(*_tune_sets(image_root), "tune.study=all-fail", "tune.n_trials=2",
               "tune.space={weight_decay: {type: float, low: -2, high: -1}}")
    with pytest.raises(TuneFailed, match=r"no trial of study 'all-fail' completed.*\ntrial 0: ValueError: Invalid weight_decay"):
        tune_model(spark, cfg, "tune-2")
