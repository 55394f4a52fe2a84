"""pipelines.train end to end: image files -> ingest -> train on each backend and feeder -> MLflow registry.

One tiny image table (ingested once per module through the real ingest pipeline) and one epoch per run;
the learning task is trivially separable (dark vs bright images), so a working loop beats chance clearly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlspark.config import load_config
from dlspark.tracking import CANDIDATE, CHAMPION, list_versions, resolve_tracking
from dlspark.train.inputs import TrainInputError, sentiment_labels
from pipelines.ingest_images import ingest_images
from pipelines.train import train_model
from tests.image_zoo import separable_images, write_tree
from tests.stacks import needs


@pytest.fixture(scope="module")
def image_table(spark, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_pipeline")
    write_tree(root / "landing", separable_images())
    cfg = load_config(overrides=[f"paths.data_dir={root}", "ingest_images.input=landing", "ingest_images.size=[12,12]",
                                 "ingest_images.color_mode=L", "ingest_images.resize=stretch",
                                 "ingest_images.split={train: 0.6, val: 0.2, test: 0.2, salt: ''}"])
    assert ingest_images(spark, cfg, "ingest-1").counts.written == 96
    return root


def _train_cfg(root: Path, run_name: str, *sets: str):
    return load_config(pipeline="image_classification", overrides=[
        f"paths.data_dir={root}", "train.table=tables/images", "train.epochs=1", "train.lr=0.01", "train.warmup_epochs=0",
        "train.feed.batch_size=8", "train.feed.shuffle_buffer=64", f"train.run_name={run_name}",
        "mlflow.registered_model=test-images", "train.num_workers=2", *sets,
    ])


@pytest.mark.parametrize("feeder", ["arrow", pytest.param("petastorm", marks=needs("petastorm"))])
def test_local_backend_trains_logs_and_registers(spark, image_table, feeder):
    cfg = _train_cfg(image_table, f"local-{feeder}", f"train.feed.feeder={feeder}", "train.epochs=3")
    report = train_model(spark, cfg, f"run-{feeder}")
    s = report.summary
    assert s["backend"] == "local" and s["feeder"] == feeder and s["epochs_trained"] == 3
    assert s["test_metrics"]["test_accuracy"] >= 0.8, s["test_metrics"]  # dark vs bright: far above chance (0.5)
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    run = target.client().get_run(report.mlflow_run_id)
    assert run.data.params["train.feed.feeder"] == feeder
    assert run.data.tags["input.table"].endswith("tables/images")
    assert run.data.metrics["test_accuracy"] == pytest.approx(s["test_metrics"]["test_accuracy"])
    versions = {v.version: v for v in list_versions(target, "test-images")}
    assert CANDIDATE in versions[report.registration.version].aliases
    assert any(CHAMPION in v.aliases for v in versions.values())
    assert s["registered_now"] and versions[report.registration.version].tags["dlspark.weights_sha256"] == report.result.weights_digest
    page = image_table / "checkpoints" / f"local-{feeder}" / "report" / "report.html"
    assert page.is_file() and "Per class (test split)" in page.read_text()
    logged = {a.path for a in target.client().list_artifacts(report.mlflow_run_id, "report")}
    assert {"report/report.html", "report/curves.png", "report/confusion.png"} <= logged

    again = train_model(spark, cfg, f"rerun-{feeder}")            # the finished run: the same weights, no new version
    assert not again.summary["registered_now"] and again.registration.version == report.registration.version
    assert "nothing new registered" in again.registration.reason
    assert len(list_versions(target, "test-images")) == len(versions)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("horovod", marks=needs("horovod")), "torch_distributor"])
def test_distributed_backends_run_the_same_job(spark, image_table, backend):
    # 2 workers scale the LR x2: a gentler base LR than the local test keeps BatchNorm with 8-row batches stable.
    cfg = _train_cfg(image_table, f"dist-{backend}", f"train.backend={backend}", "train.epochs=2", "train.lr=0.003")
    report = train_model(spark, cfg, f"run-{backend}")
    assert report.summary["backend"] == backend and report.summary["world_size"] == 2
    assert report.summary["test_metrics"]["test_accuracy"] >= 0.7, report.summary["test_metrics"]


def test_logged_model_reloads_with_its_preprocessing(spark, image_table, tmp_path):
    import mlflow

    cfg = _train_cfg(image_table, "reload", "train.epochs=2")
    report = train_model(spark, cfg, "run-reload")
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    mlflow.set_tracking_uri(target.tracking_uri)
    model = mlflow.pytorch.load_model(report.model_uri)
    x = np.zeros((2, 1, 12, 12), np.float32)
    assert tuple(model(__import__("torch").from_numpy(x)).shape) == (2, 2)
    folder = Path(mlflow.artifacts.download_artifacts(report.model_uri, dst_path=str(tmp_path)))
    spec = json.loads((folder / "extras" / "preprocessing.json").read_text())
    assert spec["image_shape"] == [12, 12, 1] and len(spec["mean"]) == 1


def test_table_without_labels_is_a_clear_error(spark, tmp_path):
    cfg = _train_cfg(tmp_path, "nolabels")
    (tmp_path / "tables/images/split=train").mkdir(parents=True)
    with pytest.raises(Exception, match="ingest|no Parquet table"):
        train_model(spark, cfg, "run-x")


def test_sentiment_label_mapping_handles_neutral():
    stored = {"negative": 0, "neutral": 1, "positive": 2}
    drop = load_config(pipeline="sentiment")
    assert sentiment_labels(drop, stored) == (("negative", "positive"), {"negative": 0, "positive": 1})
    as_neg = load_config(pipeline="sentiment", overrides=["train.sentiment.neutral=negative"])
    assert sentiment_labels(as_neg, stored)[1] == {"negative": 0, "positive": 1, "neutral": 0}
    with pytest.raises(TrainInputError, match="positive_label"):
        sentiment_labels(drop, {"neg": 0, "pos": 1})


def test_text_models_record_how_raw_text_becomes_ids():
    from dlspark.feed import FeedSpec
    from pipelines.train import _preprocessing

    cfg = load_config(pipeline="sentiment", overrides=["ingest_text.lowercase=true", "ingest_text.max_length=32"])
    spec = _preprocessing(cfg, FeedSpec(kind="text", files=("f.parquet",), max_length=32, label_map={"negative": 0, "positive": 1}))
    assert spec["max_length"] == 32 and spec["text"]["tokenizer"] == "minilm"
    assert spec["text"]["normalize"] == {"lowercase": True, "mask_urls": True, "mask_mentions": True, "url_token": "http",
                                         "mention_token": "@user"}


@pytest.mark.connect
@pytest.mark.parametrize(("sets", "alternative"), [
    (["train.backend=horovod"], "train.backend=torch_distributor"),
    (["train.feed.feeder=petastorm"], "train.feed.feeder=arrow"),
])
def test_what_spark_connect_cannot_run_fails_at_start_naming_the_alternative(spark, tmp_path, monkeypatch, sets, alternative):
    from dlspark.config import ConfigError
    from dlspark.spark import connect

    if not connect.is_connect(spark):  # on the classic stack, the same check as a Connect session would see it
        monkeypatch.setattr(connect, "is_connect", lambda session: True)
    cfg = load_config(pipeline="image_classification", overrides=[f"paths.data_dir={tmp_path}", *sets])
    with pytest.raises(ConfigError, match=rf"Spark Connect does not have: use {alternative}"):
        train_model(spark, cfg, "run-1")  # before any table is read: tmp_path holds none
