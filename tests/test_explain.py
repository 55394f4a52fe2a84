"""Explanations that can fail: Integrated Gradients must find the evidence a model was trained to use.

Images: a CNN learns "a bright square in the top-left quadrant = class 1" on noisy images; for the rows it calls
class 1, most attribution mass must lie in that quadrant (a quarter of the image). Text: a textcnn learns
"token 7 present = positive" among random tokens; token 7 must rank first in the positive rows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("captum")

from dlspark.explain.attributions import embedding_layer, explain_images, explain_tokens, region_share  # noqa: E402
from dlspark.models import build_model  # noqa: E402
from dlspark.models.servable import servable  # noqa: E402
from tests.stacks import once_per_ci  # noqa: E402

PURE_TORCH = once_per_ci("pure torch and captum, the same versions on both stacks")

SIZE, MEAN, STD = 16, (0.5,), (0.25,)
QUADRANT = (slice(0, SIZE // 2), slice(0, SIZE // 2))


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, size=(n, 1, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, SIZE // 2 - 4, 2)
        pixels[i, 0, r:r + 4, c:c + 4] = 255
    return (pixels / 255 - MEAN[0]) / STD[0], labels


def _fit(model: torch.nn.Module, batches, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        x, y = batches(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _cycle(x: np.ndarray, y: np.ndarray, size: int = 64):
    """Step -> the next batch of ``size`` rows, round and round."""
    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        at = step * size % len(x)
        return torch.from_numpy(x[at:at + size]), torch.from_numpy(y[at:at + size])

    return batch


@pytest.fixture(scope="module")
def region_model():
    torch.manual_seed(0)
    x, y = _images(1024, 0)
    model = build_model({"name": "cnn", "in_channels": 1, "num_classes": 2, "widths": [8, 16], "hidden": 16, "dropout": 0.0})
    return _fit(model, _cycle(x, y), 300)


@PURE_TORCH
def test_image_attributions_fall_where_the_label_is_decided(region_model):
    x, y = _images(64, 1)
    out = explain_images(region_model, x, MEAN, STD, steps=32)
    assert (out.target == y).mean() >= 0.95, "the model did not learn the task"
    ones = out.target == 1
    share = region_share(out.scores, QUADRANT)
    assert share[ones].mean() > 0.6, share[ones]                      # 25% of the area holds most of the mass
    assert out.scores.shape == (64, SIZE, SIZE) and (out.scores >= 0).all()
    assert np.median(out.convergence) < 0.1                            # IG's sum matches the logit gap


@PURE_TORCH
def test_a_model_of_another_region_is_not_credited_to_the_quadrant(region_model):
    # control: the same rows explained by a model that learnt the bottom-right quadrant puts little mass top-left
    x, y = _images(1024, 2)
    flipped = np.ascontiguousarray(x[:, :, ::-1, ::-1])
    model = build_model({"name": "cnn", "in_channels": 1, "num_classes": 2, "widths": [8, 16], "hidden": 16, "dropout": 0.0})
    model = _fit(model, _cycle(flipped, y), 300)
    test, _ = _images(64, 3)
    out = explain_images(model, np.ascontiguousarray(test[:, :, ::-1, ::-1]), MEAN, STD, steps=32)
    assert region_share(out.scores, QUADRANT)[out.target == 1].mean() < 0.3


@PURE_TORCH
def test_the_token_the_label_depends_on_ranks_first():
    length, key = 12, 7

    def batch(seed: int):
        r = np.random.default_rng(seed)
        ids = r.integers(10, 50, size=(64, length))
        lengths = r.integers(4, length + 1, 64)
        mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
        y = r.integers(0, 2, 64)
        for i in np.flatnonzero(y):
            ids[i, r.integers(0, lengths[i])] = key
        ids = ids * mask
        return ids, mask, y

    model = servable(build_model({"name": "textcnn", "num_classes": 2, "embeddings": None, "vocab_size": 64,
                                  "embed_dim": 16, "kernel_sizes": [3], "channels": 16, "dropout": 0.0}), "text")

    def feed(step: int):
        ids, mask, y = batch(step)
        return torch.from_numpy(np.stack([ids, mask], axis=1)), torch.from_numpy(y)

    model = _fit(model, feed, 300)
    assert isinstance(embedding_layer(model), torch.nn.Embedding)
    ids, mask, y = batch(10_000)
    out = explain_tokens(model, ids, mask, steps=32)
    assert (out.target == y).mean() >= 0.95, "the model did not learn the task"
    positive = np.flatnonzero(out.target == 1)
    top = [ids[i, int(np.argmax(out.scores[i]))] for i in positive]
    assert np.mean(np.array(top) == key) >= 0.9
    assert (out.scores[mask == 0] == 0).all()                           # padding gets nothing


def test_a_model_without_embeddings_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="no nn.Embedding"):
        embedding_layer(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- the job on Spark

def test_explain_job_writes_one_row_per_input_row_with_errors_and_a_report(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlspark.config import load_config
    from pipelines.explain import explain
    from tests.inference_models import IMAGE_LABELS, IMAGE_SHAPE, register_image_model

    register_image_model(tmp_path)
    rng = np.random.default_rng(0)
    n = 40
    pixels = [rng.integers(0, 255, size=IMAGE_SHAPE, dtype=np.uint8).tobytes() for _ in range(n)] + [b"\x00" * 10]
    table = pa.table({"sha256": [f"s{i:03d}" for i in range(n + 1)], "label": [IMAGE_LABELS[i % 3] for i in range(n + 1)],
                      "pixels": pa.array(pixels, pa.binary()), "shape": [list(IMAGE_SHAPE)] * (n + 1)})
    (tmp_path / "tables" / "images" / "split=test").mkdir(parents=True)
    pq.write_table(table, tmp_path / "tables" / "images" / "split=test" / "part-0.parquet")
    cfg = load_config(pipeline="image_classification", overrides=[
        f"paths.data_dir={tmp_path}", "mlflow.registered_model=test-images", "train.table=tables/images",
        "explain.rows=null", "explain.steps=8", "explain.batch_size=8", "explain.per_class=2"])
    report = explain(spark, cfg, "run-x")
    assert (report.rows, report.explained, report.errors) == (n + 1, n, 1)        # counts reconcile, nothing dropped
    out = spark.read.parquet(report.output).where("run_id = 'run-x'")
    bad = out.where("sha256 = 's040'").first()
    assert bad["prediction"] is None and bad["attributions"] is None and bad["error"].startswith("wrong_shape")
    good = out.where("error is null").collect()
    assert all(r["attribution_shape"] == [8, 8] and len(r["attributions"]) == 64 and min(r["attributions"]) >= 0
               for r in good)
    page = (tmp_path / "reports" / "explanations" / "run-x" / "report.html").read_text()
    assert "Integrated Gradients" in page and page.count("<img") >= 1 and "predicted" in page

    from dataclasses import replace

    from pipelines.batch_inference import score_table

    batch_cfg = replace(cfg, inference=replace(cfg.inference, explain=True, split="test"),
                        explain=replace(cfg.explain, rows=10, input="tables/nowhere", split=None))
    scored = score_table(spark, batch_cfg, "run-b")           # inference.explain: the scored rows, not explain.input
    assert scored.rows == n + 1 and " of 10 rows explained" in (scored.explanations or "")
    batch_rows = spark.read.parquet(report.output).where("run_id = 'run-b'")
    assert batch_rows.count() == 10 and batch_rows.where("prediction is not null or error is not null").count() == 10


def test_explain_refuses_a_split_the_input_does_not_have(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlspark.config import ConfigError, load_config
    from dlspark.explain.explain_table import select_rows

    (tmp_path / "t").mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "t" / "part-0.parquet")
    cfg = load_config(pipeline="image_classification", overrides=["explain.split=test"])
    with pytest.raises(ConfigError, match="has no split column"):
        select_rows(spark.read.parquet(str(tmp_path / "t")), cfg)
