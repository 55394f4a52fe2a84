"""Drift monitoring: PSI/KS/class-share statistics (pure) and the monitor job end to end on Spark."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dlspark.config import ConfigError, load_config
from dlspark.inference.predictors import softmax
from dlspark.monitoring import Sample, Thresholds, compare_classes, compare_distribution, compare_samples, ks_pvalue, psi
from dlspark.monitoring.compare import per_class_probabilities
from dlspark.monitoring.drift import floor_shares, psi_from_shares, quantile_edges
from dlspark.monitoring.features import image_stats
from dlspark.monitoring.report import render_html
from pipelines.monitor import feature_definitions

RNG = np.random.default_rng(7)
T = Thresholds(psi=0.2, ks_pvalue=0.01, min_rows=100, bins=10)


# ---------------------------------------------------------------- pure statistics

def test_psi_of_identical_samples_is_zero_and_of_same_distribution_is_small():
    a = RNG.normal(size=2000)
    assert psi(a, a.copy()) == pytest.approx(0.0, abs=1e-12)
    assert psi(a, RNG.normal(size=2000)) < 0.05


def test_psi_of_a_shifted_sample_is_above_threshold():
    a = RNG.normal(size=2000)
    assert psi(a, RNG.normal(loc=1.0, size=2000)) > 0.2


def test_psi_matches_a_hand_computed_two_bin_example():
    # baseline median 1.5 -> bins (-inf, 1.5), [1.5, inf): baseline shares .5/.5, current .25/.75
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(np.array([0, 1, 2, 3.0]), np.array([0, 2, 2, 3.0]), bins=2) == pytest.approx(expected)
    assert expected == pytest.approx(0.27465, abs=1e-4)


def test_psi_stays_finite_when_current_falls_outside_the_baseline_bins():
    value = psi(np.arange(100.0), np.full(100, 1000.0), bins=4)
    assert math.isfinite(value) and value > 5


def test_tied_baseline_quantiles_merge_and_point_masses_get_their_own_bin():
    edges = quantile_edges(np.array([1.0] * 50 + [2.0] * 50), bins=10)
    assert list(edges) == [-np.inf, 1.0, np.nextafter(1.0, 2), 1.5, 2.0, np.nextafter(2.0, 3), np.inf]
    assert psi(np.ones(100), np.ones(100)) == pytest.approx(0.0, abs=1e-12)
    mostly_zero = np.where(RNG.random(1000) < 0.95, 0.0, RNG.random(1000))    # e.g. unknown-token rates
    assert psi(mostly_zero, np.where(RNG.random(1000) < 0.95, 0.0, RNG.random(1000))) < 0.05
    assert psi(mostly_zero, np.where(RNG.random(1000) < 0.7, 0.0, RNG.random(1000))) > 0.2


def test_bad_inputs_raise_with_a_message():
    with pytest.raises(ValueError, match="baseline sample is empty"):
        psi(np.array([]), np.ones(3))
    with pytest.raises(ValueError, match="differ in length"):
        psi_from_shares(floor_shares(np.ones(2)), floor_shares(np.ones(3)))
    with pytest.raises(ValueError, match="both samples need values"):
        ks_pvalue(np.ones(3), np.array([np.nan]))
    with pytest.raises(ValueError, match="bins >= 2"):
        Thresholds(bins=1)
    with pytest.raises(ValueError, match="3 classes"):
        per_class_probabilities(np.ones((4, 2)), ["a", "b", "c"])


def test_ks_flags_a_shift_and_not_a_same_distribution_sample():
    a = RNG.normal(size=500)
    assert ks_pvalue(a, RNG.normal(size=500)) > 0.01
    assert ks_pvalue(a, RNG.normal(loc=0.5, size=500)) < 0.01


def test_distribution_decisions_and_min_rows():
    a = RNG.normal(size=500)
    same = {m.statistic: m for m in compare_distribution("x", a, RNG.normal(size=500), T)}
    shifted = {m.statistic: m for m in compare_distribution("x", a, RNG.normal(loc=1, size=500), T)}
    few = {m.statistic: m for m in compare_distribution("x", a, RNG.normal(loc=1, size=50), T)}
    assert not same["psi"].drifted and not same["ks_pvalue"].drifted and same["psi"].judged
    assert shifted["psi"].drifted and shifted["ks_pvalue"].drifted
    assert shifted["psi"].metric == "psi/x" and shifted["psi"].threshold == 0.2
    assert shifted["psi"].current_value == pytest.approx(1.0, abs=0.2)
    assert few["psi"].value > 0.2 and not few["psi"].drifted and not few["psi"].judged   # too few rows to judge


def test_class_shares_psi_and_rows_per_class():
    classes = ["a", "b", "c"]
    base = {"a": 300, "b": 300, "c": 400}
    same = compare_classes(base, {"a": 150, "b": 150, "c": 200}, classes, T)
    moved = compare_classes(base, {"a": 900, "b": 50, "c": 50, "unknown": 7}, classes, T)
    assert same[0].value == pytest.approx(0.0, abs=1e-12) and not same[0].drifted
    expected = sum((c - b) * math.log(c / b) for b, c in zip([0.3, 0.3, 0.4], [0.9, 0.05, 0.05]))
    assert moved[0].metric == "psi/class_share" and moved[0].value == pytest.approx(expected) and moved[0].drifted
    shares = {m.feature: (m.baseline_value, m.current_value) for m in moved[1:]}
    assert shares == {"class:a": (0.3, 0.9), "class:b": (0.3, 0.05), "class:c": (0.4, 0.05)}


def test_compare_samples_uses_shared_features_and_ks_only_on_continuous_ones():
    probs = RNG.dirichlet([1, 1], size=200)
    b = Sample(200, {"probability": probs.max(1), **per_class_probabilities(probs, ["n", "p"]), "brightness": RNG.normal(size=200)},
               {"n": 100, "p": 100}, accuracy=0.8, labelled=200)
    c = Sample(200, {"probability": probs.max(1), **per_class_probabilities(probs, ["n", "p"])}, {"n": 100, "p": 100})
    names = [m.metric for m in compare_samples(b, c, ["n", "p"], T)]
    assert "psi/probability" in names and "ks_pvalue/probability" in names and "psi/probability:p" in names
    assert "ks_pvalue/probability:p" not in names and not any("brightness" in n for n in names)
    acc = next(m for m in compare_samples(b, c, ["n", "p"], T) if m.metric == "accuracy")
    assert (acc.baseline_value, acc.current_value, acc.drifted) == (0.8, None, False)


def test_image_stats_are_mean_and_std_of_the_bytes():
    out = image_stats(pd.Series([bytes([0, 0, 255, 255]), None, bytes([10] * 4)]))
    assert out["brightness"].tolist()[0] == 127.5 and out["contrast"].tolist()[0] == 127.5
    assert np.isnan(out.loc[1, "brightness"]) and (out.loc[2, "brightness"], out.loc[2, "contrast"]) == (10.0, 0.0)


def test_unknown_rate_counts_unk_ids_over_attended_tokens():
    from dlspark.monitoring.features import unknown_rate_fn

    rate = unknown_rate_fn("minilm", 16)(pd.Series(["hello world", None, "\u2603 \U0001F600 ok"]))
    assert rate[0] == 0.0 and np.isnan(rate[1])
    assert rate[2] == pytest.approx(2 / 5)     # [CLS] [UNK] [UNK] ok [SEP]


def test_feature_definitions_pick_one_definition_both_sides_share():
    assert feature_definitions([["pixels", "x"], ["pixels"]], "image") == {"brightness": "pixels", "contrast": "pixels"}
    assert feature_definitions([["pixels"], ["prediction"]], "image") == {}
    ingested = ["text", "attention_mask", "unknown_tokens", "num_tokens"]
    assert feature_definitions([ingested, ingested], "text") == {"text_length": "attention_mask", "unknown_rate": "ingested"}
    assert feature_definitions([ingested, ["text", "prediction"]], "text") == {"text_length": "text", "unknown_rate": "text"}


def test_report_highlights_drifted_metrics():
    metrics = compare_distribution("brightness", RNG.normal(size=200), RNG.normal(loc=2, size=200), T)
    page = render_html("r", {"model": "m"}, metrics, {"brightness": b"\x89PNG"})
    assert page.count("class='drift'") == 2 and "psi/brightness" in page and "data:image/png;base64," in page


def test_monitor_config_is_validated():
    with pytest.raises(ConfigError, match="monitor.bins"):
        load_config(overrides=["monitor.bins=1"])
    with pytest.raises(ConfigError, match="monitor.sample_rows"):
        load_config(overrides=["monitor.sample_rows=10", "monitor.min_rows=100"])


# ---------------------------------------------------------------- end to end on Spark

N = 400


def _images(seed: int, n: int = N) -> np.ndarray:
    """Skewed-dark 8x8x1 uint8 images (beta(2, 5)), so inverting them moves brightness."""
    from tests.inference_models import IMAGE_SHAPE

    return (np.random.default_rng(seed).beta(2, 5, size=(n, *IMAGE_SHAPE)) * 255).astype(np.uint8)


def _predict(images: np.ndarray) -> list[str]:
    from tests.inference_models import IMAGE_LABELS, image_model

    x = torch.from_numpy((images.astype(np.float32) / 255 - 0.5) / 0.25).permute(0, 3, 1, 2)
    with torch.no_grad():
        return [IMAGE_LABELS[int(i)] for i in softmax(image_model()(x).numpy()).argmax(axis=1)]


def _write(root: Path, images: np.ndarray, labels: list[str], split: str, prefix: str) -> None:
    from tests.inference_models import IMAGE_LABELS, IMAGE_SHAPE

    table = pa.table({
        "sha256": [f"{prefix}{i:04d}" for i in range(len(images))],
        "label": labels,
        "label_index": pa.array([IMAGE_LABELS.index(x) for x in labels], pa.int32()),
        "pixels": pa.array([im.tobytes() for im in images], pa.binary()),
        "shape": pa.array([list(IMAGE_SHAPE)] * len(images), pa.list_(pa.int32())),
    })
    (root / f"split={split}").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / f"split={split}" / "part-0.parquet")


@pytest.fixture(scope="module")
def monitor_store(tmp_path_factory):
    """Baseline: tables/images split=test (labels right on even rows: accuracy 0.5); tables/same: a fresh sample of
    the same distribution labelled with the model's predictions (accuracy 1.0); tables/inverted: 255 - those images."""
    from tests.inference_models import IMAGE_LABELS, register_image_model

    data = tmp_path_factory.mktemp("monitor")
    register_image_model(data)
    base = _images(1)
    right = _predict(base)
    wrong = [p if i % 2 == 0 else IMAGE_LABELS[(IMAGE_LABELS.index(p) + 1) % 3] for i, p in enumerate(right)]
    _write(data / "tables" / "images", base, wrong, "test", "b")
    _write(data / "tables" / "images", _images(3, 50), _predict(_images(3, 50)), "train", "t")
    same = _images(2)
    _write(data / "tables" / "same", same, _predict(same), "test", "s")
    _write(data / "tables" / "inverted", 255 - same, _predict(255 - same), "test", "i")
    return data


def _args(data: Path, current: str, *extra: str) -> list[str]:
    return ["--pipeline", "image_classification", "--set", f"paths.data_dir={data}",
            "--set", "mlflow.registered_model=test-images", "--set", "train.table=tables/images",
            "--set", "inference.batch_size=100", "--set", f"monitor.current={current}", *extra]


def test_an_unshifted_sample_is_not_flagged_and_everything_is_written(spark, monitor_store):
    from dlspark.tracking import resolve_tracking
    from pipelines.monitor import monitor

    data = monitor_store
    cfg = load_config(pipeline="image_classification", overrides=[a for a in _args(data, "tables/same")[2:] if a != "--set"])
    report = monitor(spark, cfg, "run-same")
    by_name = {m.metric: m for m in report.metrics}
    assert report.drifted == [], [(m.metric, m.value) for m in report.drifted]
    for name in ("psi/brightness", "ks_pvalue/brightness", "psi/contrast", "psi/probability", "ks_pvalue/probability",
                 "psi/class_share", "psi/probability:circle"):
        assert by_name[name].judged and by_name[name].value is not None, name
    assert by_name["rows"].baseline_value == N and by_name["rows"].current_value == N     # only the test split
    assert by_name["accuracy"].baseline_value == pytest.approx(0.5) and by_name["accuracy"].current_value == 1.0
    written = spark.read.parquet(report.output).where("run_id = 'run-same'")
    assert written.count() == len(report.metrics) and written.where("drifted").count() == 0
    page = Path(report.report).read_text()
    assert page.count("<img") == 1 + 2 + 1 + 3     # class shares, brightness/contrast, probability, 3 per-class
    assert "Slices of the current table" in page and report.flagged_slices == []
    slices = spark.read.parquet(report.slice_output).where("run_id = 'run-same'")
    assert {r["slice"] for r in slices.select("slice").distinct().collect()} == {"all", "label", "prediction", "brightness"}
    assert slices.where("slice = 'label'").groupBy().sum("rows").first()[0] == N     # every row in one label value
    assert slices.where("slice = 'all'").first()["accuracy"] == 1.0
    client = resolve_tracking(cfg.mlflow, str(data)).client()
    logged = client.get_run(report.mlflow_run_id).data.metrics
    assert logged["psi/brightness"] == pytest.approx(by_name["psi/brightness"].value) and logged["drifted_metrics"] == 0
    assert [f.path for f in client.list_artifacts(report.mlflow_run_id, "monitoring")] == ["monitoring/report.html"]


def test_an_inverted_copy_scored_by_batch_inference_is_flagged_and_exits_4(spark, monitor_store, monkeypatch):
    import jobs.monitor as job
    from pipelines.batch_inference import score_table

    data = monitor_store
    cfg = load_config(pipeline="image_classification", overrides=[
        f"paths.data_dir={data}", "mlflow.registered_model=test-images", "inference.input=tables/inverted",
        "inference.output=tables/predictions/inverted"])
    score_table(spark, cfg, "score-inverted")       # current = a predictions table, joined back to its inputs
    # the job's own session would be this suite's shared one with the job's settings applied to it: reuse it as is
    monkeypatch.setattr("dlspark.spark.session.build_spark_session", lambda _: spark)
    runs = []
    real = job.run_spark_pipeline
    monkeypatch.setattr(job, "run_spark_pipeline", lambda *a, **k: runs.append(real(*a, **k)) or runs[-1])
    assert job.main(_args(data, "tables/predictions/inverted")) == job.EXIT_DRIFT
    monkeypatch.setattr(job, "run_spark_pipeline", lambda *a, **k: runs[0])    # same report, only the flag differs
    assert job.main(_args(data, "tables/predictions/inverted", "--no-fail")) == 0
    metrics = spark.read.parquet(str(data / "tables" / "monitoring")).where("drifted").select("metric").distinct()
    flagged = {r["metric"] for r in metrics.collect()}
    assert {"psi/brightness", "ks_pvalue/brightness"} <= flagged
    reports = list((data / "reports" / "monitoring").glob("*/report.html"))
    assert any("class='drift'" in p.read_text() for p in reports)
