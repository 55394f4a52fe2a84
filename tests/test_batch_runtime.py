"""Batch inference on a runtime other than the source (ONNX by measured speed) and champion vs challenger offline.

Not marked ``connect``: the scoring path is the one tests/test_batch_inference.py already runs over Spark Connect;
these two add registry and comparison logic that does not depend on the session kind.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.batch_inference import score_table
from tests.inference_models import IMAGE_LABELS, register_image_model
from tests.test_batch_inference import (  # noqa: F401 - image_store: the same module-scoped fixture, one per module
    BAD,
    N_IMAGES,
    _cfg,
    _model_predictions,
    _written,
    image_store,
    write_image_table,
)


def test_runtime_auto_scores_the_champion_on_its_measured_faster_export(spark, image_store):  # noqa: F811
    from dlspark.config import MlflowConfig
    from dlspark.export.onnx import export_registered_onnx
    from dlspark.inference.runtime import RuntimeUnavailable
    from dlspark.tracking import resolve_tracking

    data, _ = image_store
    target = resolve_tracking(MlflowConfig(), str(data))
    export = export_registered_onnx(target, "models:/test-images@champion", "test-images-onnx")
    metrics = target.client().get_run(export.run_id).data.metrics
    assert metrics["onnx_rows_per_s"] > 0 and metrics["source_rows_per_s"] > 0   # measured at export
    pinned = score_table(spark, _cfg(data, "inference.runtime=onnx", "inference.output=tables/predictions/rt"), "r")
    source = score_table(spark, _cfg(data, "inference.runtime=source", "inference.output=tables/predictions/rt"), "r")
    assert (pinned.runtime, pinned.flavor, pinned.model) == ("onnx", "onnx", f"test-images-onnx/{export.version}")
    assert (source.runtime, source.flavor, source.model) == ("source", "pytorch", "test-images/1")
    rows = _written(spark, data, "rt")
    assert rows.count() == 2 * N_IMAGES                        # one scoring per runtime, in the source's output
    by_model = {}
    for r in rows.collect():
        by_model.setdefault(r["model_name"], {})[r["sha256"]] = r["prediction"]
    assert by_model["test-images-onnx"] == by_model["test-images"]
    auto = score_table(spark, _cfg(data, "inference.output=tables/predictions/rt-auto"), "r")
    faster = metrics["onnx_rows_per_s"] > metrics["source_rows_per_s"]
    assert auto.runtime == ("onnx" if faster else "source") and "measured" in auto.runtime_reason
    with pytest.raises(RuntimeUnavailable, match="export-torchscript --source models:/test-images/1"):
        score_table(spark, _cfg(data, "inference.runtime=torchscript"), "r")


def test_compare_challenger_scores_both_versions_and_reports_what_the_split_would_answer(spark, tmp_path):
    from dlspark.traffic_split import key_point
    from pipelines.batch_inference import compare_challenger

    register_image_model(tmp_path)                                          # v1: champion
    rotated = IMAGE_LABELS[1:] + IMAGE_LABELS[:1]                           # v2: every class named wrongly
    register_image_model(tmp_path, labels=rotated)                          # v2: candidate
    labels = write_image_table(tmp_path / "tables" / "images")
    cfg = _cfg(tmp_path, "serve.rollout.mode=ab", "serve.rollout.split=0.5", "inference.runtime=source")
    report = compare_challenger(spark, cfg, "r")
    assert (report.champion.model, report.challenger.model) == ("test-images/1", "test-images/2")
    good = [i for i in range(N_IMAGES) if i not in BAD]
    assert report.rows == N_IMAGES and report.agreement == pytest.approx(len(BAD) / N_IMAGES)   # only the nulls agree
    to_challenger = [i for i in range(N_IMAGES) if key_point(f"h{i:03d}") < 0.5]
    assert report.challenger_rows == len(to_challenger) and 0 < len(to_challenger) < N_IMAGES
    predicted = _model_predictions()
    right = sum(1 for i in good if i not in to_challenger and predicted[i] == labels[i]) + \
        sum(1 for i in good if i in to_challenger and rotated[IMAGE_LABELS.index(predicted[i])] == labels[i])
    assert (report.labelled, report.split_accuracy) == (N_IMAGES, pytest.approx(right / N_IMAGES))
    saved = json.loads(Path(report.path).read_text())
    assert saved["challenger_rows"] == len(to_challenger) and set(saved["by_true_label"]) <= set(IMAGE_LABELS)
    again = compare_challenger(spark, cfg, "r2")                            # idempotent: nothing scored twice
    assert again.champion.skipped and again.challenger.skipped and again.rows == N_IMAGES
    with pytest.raises(Exception, match="serve.rollout.mode"):
        compare_challenger(spark, _cfg(tmp_path), "r")
