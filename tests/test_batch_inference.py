"""Batch inference end to end on Spark: bad rows, reconciliation, accuracy, idempotency, model versions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dlspark.config import load_config
from dlspark.inference.model import ModelResolutionError
from dlspark.inference.predictors import softmax
from dlspark.text.tokenize import load_tokenizer, tokenize_batch
from pipelines.batch_inference import score_table
from tests.inference_models import (
    IMAGE_LABELS,
    IMAGE_SHAPE,
    image_model,
    register_image_model,
    register_text_model,
)

pytestmark = pytest.mark.connect  # also run over Spark Connect (make test-connect)

N_IMAGES = 40
BAD = {5: None, 17: b"\x01" * 10}   # a null image and a wrong byte count


def _pixels(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)


def _model_predictions() -> list[str]:
    x = np.stack([_pixels(i) for i in range(N_IMAGES)]).astype(np.float32)
    x = torch.from_numpy((x / 255 - 0.5) / 0.25).permute(0, 3, 1, 2)
    with torch.no_grad():
        return [IMAGE_LABELS[int(i)] for i in softmax(image_model()(x).numpy()).argmax(axis=1)]


def write_image_table(root: Path) -> list[str]:
    """An ingest-shaped table; labels: the model's own prediction on even rows, another class on odd rows."""
    predicted = _model_predictions()
    labels = [p if i % 2 == 0 else IMAGE_LABELS[(IMAGE_LABELS.index(p) + 1) % 3] for i, p in enumerate(predicted)]
    for split, rows in (("train", range(0, 30)), ("test", range(30, N_IMAGES))):
        table = pa.table({
            "sha256": [f"h{i:03d}" for i in rows],
            "label": [labels[i] for i in rows],
            "label_index": pa.array([IMAGE_LABELS.index(labels[i]) for i in rows], pa.int32()),
            "pixels": pa.array([BAD[i] if i in BAD else _pixels(i).tobytes() for i in rows], pa.binary()),
            "shape": pa.array([list(IMAGE_SHAPE)] * len(rows), pa.list_(pa.int32())),
        })
        (root / f"split={split}").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"split={split}" / "part-0.parquet")
    return labels


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    data = tmp_path_factory.mktemp("infer")
    register_image_model(data)
    labels = write_image_table(data / "tables" / "images")
    return data, labels


def _cfg(data: Path, *overrides: str):
    return load_config(pipeline="image_classification", overrides=[
        f"paths.data_dir={data}", "mlflow.registered_model=test-images", "inference.input=tables/images",
        "inference.batch_size=8", *overrides])


def _written(spark, data: Path, name: str = "test-images"):
    return spark.read.parquet(str(data / "tables" / "predictions" / name))


def test_scores_every_row_once_with_errors_for_bad_rows_and_exact_accuracy(spark, ansi_mode, image_store):
    data, labels = image_store
    name = f"test-images-{ansi_mode}"  # one output per ANSI mode: the second would otherwise be a rerun
    report = score_table(spark, _cfg(data, f"inference.output=tables/predictions/{name}"), "run-1")

    assert (report.rows, report.scored, report.errors, report.skipped) == (N_IMAGES, N_IMAGES - 2, 2, False)
    assert report.error_reasons == {"null_image": 1, "wrong_shape": 1}
    assert report.model == "test-images/1" and report.flavor == "pytorch"
    out = {r["sha256"]: r for r in _written(spark, data, name).collect()}
    assert sorted(out) == [f"h{i:03d}" for i in range(N_IMAGES)]
    predicted = _model_predictions()
    for i in range(N_IMAGES):
        row = out[f"h{i:03d}"]
        if i in BAD:
            assert row["prediction"] is None and row["error"]
        else:
            assert row["prediction"] == predicted[i] and row["error"] is None
        assert (row["model_name"], row["model_version"], row["label"]) == ("test-images", "1", labels[i])
    right = sum(1 for i in range(N_IMAGES) if i % 2 == 0 and i not in BAD)   # error rows count as wrong
    assert report.labelled == N_IMAGES and report.accuracy == pytest.approx(right / N_IMAGES)
    assert report.train_test_accuracy == pytest.approx(0.5)
    assert {r["scored_date"] for r in out.values()} == {out["h000"]["scored_at"].date()}


def test_a_model_shipped_to_executors_scores_like_the_local_folder(spark, image_store, monkeypatch, caplog):
    """As on a cluster: the model travels as an archive (addArchive; addArtifacts over Spark Connect) and executors
    load the unpacked copy, not the driver's folder."""
    from dlspark.inference import spark_scoring

    data, _ = image_store
    monkeypatch.setattr(spark_scoring, "executors_share_files", lambda session: False)
    caplog.set_level("INFO", logger="dlspark.inference.spark_scoring")
    report = score_table(spark, _cfg(data, "inference.output=tables/predictions/shipped"), "run-1")
    assert "shipped model" in caplog.text and (report.scored, report.errors) == (N_IMAGES - 2, 2)
    predicted = _model_predictions()
    out = {r["sha256"]: r["prediction"] for r in _written(spark, data, "shipped").collect()}
    assert all(out[f"h{i:03d}"] == predicted[i] for i in range(N_IMAGES) if i not in BAD)


def test_rerun_on_the_same_input_and_model_writes_nothing(spark, image_store):
    data, _ = image_store
    score_table(spark, _cfg(data), "run-1")
    before = _written(spark, data).count()
    again = score_table(spark, _cfg(data), "run-2")
    assert again.skipped and again.rows == N_IMAGES
    assert _written(spark, data).count() == before


def test_a_run_that_died_before_its_marker_is_cleaned_up_not_duplicated(spark, image_store):
    data, _ = image_store
    cfg = _cfg(data, "inference.split=test", "inference.output=tables/predictions/partial")
    first = score_table(spark, cfg, "run-1")
    marker = data / "tables" / "predictions" / "partial" / "_dlspark" / "scoring" / f"{first.scoring_key}.json"
    marker.unlink()                                   # as if the job died after writing, before recording
    second = score_table(spark, cfg, "run-2")
    assert not second.skipped and second.rows == 10
    assert _written(spark, data, "partial").count() == 10     # the first run's rows were removed


def test_a_new_champion_is_a_new_scoring_and_the_version_is_recorded(spark, tmp_path):
    register_image_model(tmp_path)
    register_image_model(tmp_path)                     # version 2; champion only moves on a better metric
    write_image_table(tmp_path / "tables" / "images")
    v1 = score_table(spark, _cfg(tmp_path, "inference.split=test"), "r1")
    v2 = score_table(spark, _cfg(tmp_path, "inference.split=test", "inference.model=models:/test-images/2"), "r2")
    assert (v1.model, v2.model) == ("test-images/1", "test-images/2") and v1.scoring_key != v2.scoring_key
    versions = [r[0] for r in _written(spark, tmp_path).select("model_version").collect()]
    assert sorted(versions) == ["1"] * 10 + ["2"] * 10


def test_unknown_alias_or_version_lists_what_the_registry_holds(spark, image_store):
    data, _ = image_store
    with pytest.raises(ModelResolutionError, match=r"test-images has versions \[1\] and aliases"):
        score_table(spark, _cfg(data, "inference.model=models:/test-images/9"), "r")
    with pytest.raises(ModelResolutionError, match="no registered model named 'nope'"):
        score_table(spark, _cfg(data, "inference.model=nope"), "r")


def test_text_model_scores_tokens_and_raw_text_the_same(spark, tmp_path):
    register_text_model(tmp_path, max_length=16)
    texts = ["I love this phone", "I hate this film", "", "what a great song", "  "]
    labels = ["positive", "negative", "neutral", "positive", "negative"]
    tok = load_tokenizer("minilm")
    enc = tokenize_batch(tok, texts, 16)
    ids = [list(r) if t.strip() else [0] * 16 for r, t in zip(enc.input_ids, texts)]
    mask = [list(r) if t.strip() else [0] * 16 for r, t in zip(enc.attention_mask, texts)]
    root = tmp_path / "tables" / "text" / "split=test"
    root.mkdir(parents=True)
    pq.write_table(pa.table({"record_id": [f"t{i}" for i in range(5)], "text": texts, "label": labels,
                             "input_ids": pa.array(ids, pa.list_(pa.int32())),
                             "attention_mask": pa.array(mask, pa.list_(pa.int8()))}), root / "part-0.parquet")
    base = [f"paths.data_dir={tmp_path}", "mlflow.registered_model=test-sentiment", "inference.input=tables/text"]
    tokens = score_table(spark, load_config(pipeline="sentiment", overrides=base), "r1")
    raw = score_table(spark, load_config(pipeline="sentiment", overrides=[*base, "inference.text_mode=text",
                                                                          "inference.output=tables/predictions/raw"]), "r2")
    assert (tokens.rows, tokens.errors, raw.rows, raw.errors) == (5, 2, 5, 2)
    assert tokens.labelled == 4 and raw.error_reasons == {"empty_text": 2}   # neutral is not one of the model's classes
    a = {r["record_id"]: r for r in spark.read.parquet(str(tmp_path / "tables/predictions/test-sentiment")).collect()}
    b = {r["record_id"]: r for r in spark.read.parquet(str(tmp_path / "tables/predictions/raw")).collect()}
    for key in ("t0", "t1", "t3"):
        assert a[key]["prediction"] == b[key]["prediction"]
        assert np.allclose(a[key]["probabilities"], b[key]["probabilities"], atol=1e-5)
    meta = json.loads(next((tmp_path / "tables/predictions/raw/_dlspark/scoring").glob("*.json")).read_text())
    assert meta["rows"] == 5 and meta["model"] == "test-sentiment/1"


def test_delta_output_is_idempotent_and_a_committed_run_without_marker_is_not_duplicated(spark, image_store):
    data, _ = image_store
    cfg = _cfg(data, "inference.split=test", "inference.format=delta", "inference.output=tables/predictions/delta")
    first = score_table(spark, cfg, "r1")
    assert (first.rows, first.errors) == (10, 0)
    out = data / "tables" / "predictions" / "delta"
    assert (out / "_delta_log" / "00000000000000000000.json").is_file()
    (out / "_dlspark" / "scoring" / f"{first.scoring_key}.json").unlink()
    second = score_table(spark, cfg, "r2")
    assert not second.skipped and second.rows == 10
    assert score_table(spark, cfg, "r3").skipped
    from dlspark.tables import read_table

    snapshot = read_table(spark, str(out), fmt="delta")
    assert snapshot.df.count() == 10 and snapshot.version == 2    # write, delete the leftovers, write again


def test_onnx_export_of_the_champion_scores_like_the_torch_model(spark, image_store):
    from dlspark.config import MlflowConfig
    from dlspark.export.onnx import export_registered_onnx
    from dlspark.tracking import resolve_tracking

    data, _ = image_store
    target = resolve_tracking(MlflowConfig(), str(data))
    export = export_registered_onnx(target, "models:/test-images@champion", "test-images-onnx")
    assert export_registered_onnx(target, "models:/test-images@champion", "test-images-onnx").version == export.version
    report = score_table(spark, _cfg(data, "inference.model=test-images-onnx", "inference.output=tables/predictions/onnx"), "r")
    assert (report.flavor, report.rows, report.errors) == ("onnx", N_IMAGES, 2)
    assert report.train_test_accuracy == pytest.approx(0.5)          # from the torch version it was exported from
    out = {r["sha256"]: r["prediction"] for r in _written(spark, data, "onnx").collect()}
    predicted = _model_predictions()
    assert all(out[f"h{i:03d}"] == (None if i in BAD else predicted[i]) for i in range(N_IMAGES))


def test_keras_saved_model_is_scored_from_its_registered_flavor(spark, image_store):
    pytest.importorskip("tensorflow")
    from dlspark.config import MlflowConfig
    from dlspark.feed.decode import normalize_images
    from dlspark.models.keras_image import build_keras_model
    from dlspark.tracking import log_keras_model, register_and_promote, resolve_tracking, start_run
    from tests.inference_models import image_preprocessing

    data, _ = image_store
    model = build_keras_model({"name": "keras_cnn", "image_shape": list(IMAGE_SHAPE), "num_classes": 3, "widths": [4],
                               "hidden": 8})
    target = resolve_tracking(MlflowConfig(), str(data))
    pre = {**image_preprocessing(), "layout": "NHWC"}
    pixels = np.stack([_pixels(i) for i in range(N_IMAGES)])
    x = normalize_images(pixels, pre["mean"], pre["std"], channels_last=True)
    with start_run(target, "tests", "keras") as run:
        log_keras_model(model, x[:2], {"labels.json": {"labels": list(IMAGE_LABELS)}, "preprocessing.json": pre})
    register_and_promote(target, "test-keras", run.info.run_id, "model", "val_accuracy", 0.5)
    report = score_table(spark, _cfg(data, "inference.model=test-keras", "inference.output=tables/predictions/keras"), "r")
    assert (report.flavor, report.rows, report.errors) == ("keras", N_IMAGES, 2)
    want = softmax(np.asarray(model(x, training=False))).argmax(axis=1)
    out = {r["sha256"]: r["prediction_index"] for r in _written(spark, data, "keras").collect()}
    assert all(out[f"h{i:03d}"] == (None if i in BAD else int(want[i])) for i in range(N_IMAGES))
