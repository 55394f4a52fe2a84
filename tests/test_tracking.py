"""dlspark.tracking and jobs/models.py against a throwaway embedded sqlite store (no Spark, no server)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dlspark.config import MlflowConfig, load_config
from dlspark.tracking import (
    CANDIDATE,
    CHAMPION,
    TrackingError,
    champion_history,
    flatten_params,
    list_versions,
    log_epoch_metrics,
    log_run_inputs,
    log_torch_model,
    promote,
    register_and_promote,
    resolve_tracking,
    rollback,
    start_run,
)
from tests.conftest import REPO

torch = pytest.importorskip("torch")
mlflow = pytest.importorskip("mlflow")

METRICS = {"first": 0.80, "worse": 0.70, "better": 0.90}


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An embedded store holding three finished runs, each with a logged model and a val_accuracy."""
    data_dir = tmp_path_factory.mktemp("data")
    target = resolve_tracking(MlflowConfig(), str(data_dir))
    cfg = load_config(pipeline=["ingest_images", "image_classification"])
    model, example = _tiny_model(), np.arange(8, dtype=np.float32).reshape(2, 4)
    runs = {}
    for label, acc in METRICS.items():
        with start_run(target, "tests", label) as run:
            log_run_inputs(cfg, "/tables/images", 7, "sha256:abc")
            for epoch in range(2):
                log_epoch_metrics(target.tracking_uri, run.info.run_id, {"val_accuracy": acc - 0.1 + 0.1 * epoch}, step=epoch)
            info = log_torch_model(model, example, {"labels.json": {"labels": {"a": 0, "b": 1, "c": 2}},
                                                    "preprocessing.json": {"mean": [0.5], "std": [0.25]}})
        runs[label] = (run.info.run_id, info)
    return target, runs, model, example


def test_resolve_tracking_defaults_to_sqlite_under_data_dir(tmp_path):
    target = resolve_tracking(MlflowConfig(), str(tmp_path / "d"))
    assert target.tracking_uri == f"sqlite:///{tmp_path / 'd' / 'mlflow' / 'mlflow.db'}"
    assert target.registry_uri == target.tracking_uri
    assert target.artifact_location == (tmp_path / "d" / "mlflow" / "artifacts").as_uri()
    assert target.ui_command() == f"mlflow ui --backend-store-uri {target.tracking_uri}"


def test_resolve_tracking_uses_configured_uris():
    target = resolve_tracking(MlflowConfig(tracking_uri="http://mlflow:5000", registry_uri="databricks-uc"), "data")
    assert (target.tracking_uri, target.registry_uri, target.artifact_location) == ("http://mlflow:5000", "databricks-uc", None)


def test_resolve_tracking_rejects_remote_data_dir_without_uri():
    with pytest.raises(TrackingError, match="set mlflow.tracking_uri"):
        resolve_tracking(MlflowConfig(), "s3a://bucket/data")


def test_flatten_params_nests_with_dots_and_serialises_values():
    flat = flatten_params({"train": {"lr": 0.1, "feed": {"batch_size": 8}, "size": [28, 28], "run_name": None}, "conf": {}})
    assert flat == {"train.lr": "0.1", "train.feed.batch_size": "8", "train.size": "[28, 28]",
                    "train.run_name": "null", "conf": "{}"}


def test_run_holds_config_params_lineage_tags_and_epoch_metrics(store):
    target, runs, _, _ = store
    client = target.client()
    run = client.get_run(runs["first"][0])
    assert run.data.params["train.lr"] == "0.002"
    assert run.data.params["train.feed.batch_size"] == "128"
    assert run.data.params["mlflow.registered_model"] == "dlspark-fashion-mnist"
    tags = run.data.tags
    assert (tags["input.table"], tags["input.table_version"], tags["input.table_fingerprint"]) == ("/tables/images", "7", "sha256:abc")
    assert tags["git_sha"].split("-")[0] == _head_sha()
    assert tags["sys.torch"] == torch.__version__ and int(tags["sys.cpu_count"]) >= 1
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, round(m.value, 6)) for m in history] == [(0, 0.7), (1, 0.8)]
    config_file = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config/resolved_config.yaml",
                                                           tracking_uri=target.tracking_uri))
    assert "batch_size: 128" in config_file.read_text()


def test_logged_torch_model_predicts_like_the_original_and_carries_extras(store, tmp_path):
    target, runs, model, example = store
    info = runs["first"][1]
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 4)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(target.tracking_uri)
    try:
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        folder = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path)))
    finally:
        mlflow.set_tracking_uri(previous)
    expected = model(torch.from_numpy(example)).detach().numpy()
    np.testing.assert_allclose(loaded.predict(example), expected, rtol=1e-6)
    assert json.loads((folder / "extras" / "labels.json").read_text()) == {"labels": {"a": 0, "b": 1, "c": 2}}
    assert json.loads((folder / "extras" / "preprocessing.json").read_text())["std"] == [0.25]


def test_log_epoch_metrics_to_unknown_run_says_so(store):
    target = store[0]
    with pytest.raises(TrackingError, match="could not log metrics to run 'nope'"):
        log_epoch_metrics(target.tracking_uri, "nope", {"loss": 1.0}, step=0)


def test_log_run_inputs_needs_an_active_run():
    with pytest.raises(TrackingError, match="inside `with start_run"):
        log_run_inputs(load_config(), "/t", None, None)


def test_log_torch_model_rejects_an_empty_example(store):
    with start_run(store[0], "tests", "bad-example"):
        with pytest.raises(ValueError, match="non-empty numpy batch"):
            log_torch_model(_tiny_model(), np.zeros((0, 4), np.float32))


def _register_all(target, runs, name):
    return {label: register_and_promote(target, name, runs[label][0], "model", "val_accuracy", acc) for label, acc in METRICS.items()}


def _alias(target, name, alias):
    return str(target.client().get_model_version_by_alias(name, alias).version)


def test_champion_moves_only_when_the_candidate_beats_it(store):
    target, runs, _, _ = store
    results = _register_all(target, runs, "promo")
    assert (results["first"].version, results["first"].promoted, results["first"].previous_champion) == ("1", True, None)
    assert (results["worse"].promoted, results["worse"].previous_champion) == (False, "1")
    assert "does not beat champion version 1" in results["worse"].reason
    assert (results["better"].version, results["better"].promoted) == ("3", True)
    assert (_alias(target, "promo", CANDIDATE), _alias(target, "promo", CHAMPION)) == ("3", "3")
    metrics = {v.version: (v.metric_name, v.metric_value, v.aliases) for v in list_versions(target, "promo")}
    assert metrics == {"3": ("val_accuracy", 0.9, ("candidate", "champion")), "2": ("val_accuracy", 0.7, ()),
                       "1": ("val_accuracy", 0.8, ())}
    assert champion_history(target, "promo") == ["1", "3"]


def test_equal_metric_does_not_promote(store):
    target, runs, _, _ = store
    register_and_promote(target, "ties", runs["first"][0], "model", "val_accuracy", 0.8)
    again = register_and_promote(target, "ties", runs["worse"][0], "model", "val_accuracy", 0.8)
    assert not again.promoted and _alias(target, "ties", CHAMPION) == "1" and _alias(target, "ties", CANDIDATE) == "2"


def test_rollback_walks_back_the_champion_history_then_refuses(store):
    target, runs, _, _ = store
    _register_all(target, runs, "rb")
    assert rollback(target, "rb") == "1" and _alias(target, "rb", CHAMPION) == "1"
    with pytest.raises(TrackingError, match="rollback --to VERSION"):
        rollback(target, "rb")
    assert rollback(target, "rb", to_version=2) == "2" and _alias(target, "rb", CHAMPION) == "2"
    assert rollback(target, "rb") == "1"


def test_unknown_model_version_and_run_give_clear_errors(store):
    target, runs, _, _ = store
    _register_all(target, runs, "errs")
    with pytest.raises(TrackingError, match=r"registered model 'no-such' not found; registered models: \[.*'errs'"):
        rollback(target, "no-such")
    with pytest.raises(TrackingError, match=r"model 'errs' has no version '9'; versions: \[1, 2, 3\]"):
        promote(target, "errs", 9)
    with pytest.raises(TrackingError, match="run 'bogus' not found"):
        register_and_promote(target, "errs", "bogus", "model", "val_accuracy", 1.0)
    with pytest.raises(TrackingError, match=r"has no model named 'weights'; its models: \['model'\]"):
        register_and_promote(target, "errs", runs["first"][0], "weights", "val_accuracy", 1.0)
    assert _alias(target, "errs", CHAMPION) == "3"


def test_models_job_lists_promotes_and_rolls_back(store, capsys):
    target, runs, _, _ = store
    _register_all(target, runs, "cli")
    job = _load_job("models")
    base = ["--set", f"mlflow.tracking_uri={target.tracking_uri}", "--name", "cli"]
    assert job.main([*base, "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == "cli: 3 version(s)"
    assert listing[2].split()[:3] == ["3", "candidate,champion", "val_accuracy=0.9000"]
    assert listing[3].split()[:3] == ["2", "-", "val_accuracy=0.7000"]
    assert job.main([*base, "promote", "2"]) == 0 and _alias(target, "cli", CHAMPION) == "2"
    assert job.main([*base, "rollback"]) == 0 and _alias(target, "cli", CHAMPION) == "3"
    assert job.main([*base, "rollback", "--to", "1"]) == 0 and _alias(target, "cli", CHAMPION) == "1"
    capsys.readouterr()
    assert job.main([*base, "promote", "42"]) == 1
    assert "has no version '42'" in capsys.readouterr().err


def _load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _head_sha() -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
