"""Knowledge distillation: the loss, the text student, the feeder's teacher column, and the pipeline end to end
(a registered teacher scores the table once, the student learns from it and is registered with its lineage)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from dlspark.config import ConfigError, DistillConfig, FeedConfig, TrainConfig, load_config
from dlspark.feed import FeedError, FeedSpec, open_batches
from dlspark.models import build_model, model_spec
from dlspark.train import steps

# ---- the loss ---------------------------------------------------------------------------------------------------

def _batch(y: list[int], teacher: list[list[float]]) -> dict[str, torch.Tensor]:
    return {"y": torch.tensor(y), "teacher": torch.tensor(teacher)}


def test_alpha_zero_is_plain_cross_entropy_and_alpha_one_ignores_the_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2]])
    batch = _batch([0, 1], [[-3.0, 3.0], [1.0, 0.0]])
    assert steps.distillation_loss(4.0, 0.0)(logits, batch) == pytest.approx(float(F.cross_entropy(logits, batch["y"])))
    same = _batch([1, 0], [[2.0, -1.0], [0.5, 0.2]])   # the teacher agrees with the student: no soft loss left
    assert steps.distillation_loss(4.0, 1.0)(logits, same) == pytest.approx(0.0, abs=1e-7)


def test_soft_term_is_kl_at_temperature_scaled_by_t_squared():
    logits, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    t = 3.0
    p_teacher = torch.softmax(teacher / t, 1)
    kl = float((p_teacher * (torch.log(p_teacher) - torch.log_softmax(logits / t, 1))).sum())
    got = steps.distillation_loss(t, 1.0)(logits, {"y": torch.tensor([0]), "teacher": teacher})
    assert float(got) == pytest.approx(kl * t * t, rel=1e-5)


def test_gradient_moves_the_student_toward_the_teacher():
    logits = torch.zeros(1, 2, requires_grad=True)
    steps.distillation_loss(2.0, 1.0)(logits, _batch([0], [[-2.0, 2.0]])).backward()
    assert logits.grad[0, 1] < 0 < logits.grad[0, 0]     # descent raises the class the teacher prefers


def test_a_batch_without_teacher_logits_is_a_clear_error():
    with pytest.raises(ValueError, match="teacher_column"):
        steps.distillation_loss(2.0, 0.5)(torch.zeros(1, 2), {"y": torch.tensor([0])})


def test_distill_config_is_checked():
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(teacher="t", temperature=0)
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig(teacher="t", alpha=1.5)
    with pytest.raises(ConfigError, match="arrow feeder"):
        TrainConfig(distill=DistillConfig(teacher="t"), feed=FeedConfig(feeder="petastorm"))
    assert not DistillConfig().enabled


# ---- the text student ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def textcnn():
    torch.manual_seed(0)
    return build_model({"name": "textcnn", "num_classes": 2}).eval()


def test_text_student_starts_from_minilm_embeddings_and_round_trips_its_spec(textcnn):
    from dlspark.models.textcnn import pretrained_embeddings

    spec = model_spec(textcnn)
    assert spec["name"] == "textcnn" and spec["vocab_size"] == 30522 and spec["embed_dim"] == 384
    assert torch.equal(textcnn.embed.weight, pretrained_embeddings("minilm"))
    again = build_model({**spec, "embeddings": None})
    again.load_state_dict(textcnn.state_dict())
    ids = torch.randint(1, 30000, (3, 12))
    mask = torch.ones_like(ids)
    assert torch.allclose(again.eval()(ids, mask), textcnn(ids, mask))


def test_text_student_ignores_padding(textcnn):
    ids = torch.randint(1000, 2000, (2, 10))
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0
    other = ids.clone()
    other[:, 6:] = 0                                   # different padding ids, same attended tokens
    with torch.no_grad():
        assert torch.allclose(textcnn(ids, mask), textcnn(other, mask), atol=1e-6)
        assert torch.allclose(textcnn(ids, mask), textcnn(ids[:, :6], mask[:, :6]), atol=1e-6)   # trimmed padding
        assert torch.isfinite(textcnn(ids, torch.zeros_like(mask))).all()                      # no attended token


# ---- the feeder's teacher column -------------------------------------------------------------------------------

def _teacher_split(path: Path, n: int) -> str:
    """Rows whose teacher logits are [label_index, -label_index]: the batch must keep them beside their row."""
    table = pa.table({"label_index": pa.array(range(n), pa.int32()), "pixels": pa.array([bytes([i % 256]) * 4 for i in range(n)]),
                      "shape": pa.array([[2, 2, 1]] * n, pa.list_(pa.int32())),
                      "teacher_logits": pa.array([[float(i), -float(i)] for i in range(n)], pa.list_(pa.float32()))})
    pq.write_table(table, path, row_group_size=7)
    return str(path)


def test_teacher_logits_travel_with_their_rows_through_shuffling(tmp_path):
    spec = FeedSpec(kind="image", files=(_teacher_split(tmp_path / "t.parquet", 40),), image_shape=(2, 2, 1), batch_size=8,
                    shuffle_buffer=16, teacher_column="teacher_logits")
    with open_batches(spec, rank=0, world_size=1, epoch=0) as batches:
        got = list(batches)
    for b in got:
        assert b["teacher"].dtype == np.float32 and b["teacher"].shape == (len(b["y"]), 2)
        assert (b["teacher"][:, 0] == b["y"]).all() and (b["teacher"][:, 1] == -b["y"]).all()
    assert sorted(int(v) for b in got for v in b["y"]) == list(range(40))


def test_teacher_column_missing_or_on_petastorm_is_refused(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"label_index": pa.array([0, 1], pa.int32()), "pixels": pa.array([b"\0" * 4] * 2),
                             "shape": pa.array([[2, 2, 1]] * 2, pa.list_(pa.int32()))}), path)
    spec = FeedSpec(kind="image", files=(str(path),), image_shape=(2, 2, 1), batch_size=2, teacher_column="teacher_logits")
    with pytest.raises(FeedError, match="teacher_logits"):
        with open_batches(spec) as batches:
            list(batches)
    with pytest.raises(FeedError, match="arrow feeder"):
        FeedSpec(kind="image", files=(str(path),), image_shape=(2, 2, 1), feeder="petastorm", teacher_column="teacher_logits")


# ---- end to end: teacher table, student run, lineage --------------------------------------------------------------

@pytest.fixture(scope="module")
def image_root(spark, tmp_path_factory) -> Path:
    from pipelines.ingest_images import ingest_images
    from tests.image_zoo import separable_images, write_tree

    root = tmp_path_factory.mktemp("distill")
    write_tree(root / "landing", separable_images())
    cfg = load_config(overrides=[f"paths.data_dir={root}", "ingest_images.input=landing", "ingest_images.size=[12,12]",
                                 "ingest_images.color_mode=L", "ingest_images.resize=stretch",
                                 "ingest_images.split={train: 0.6, val: 0.2, test: 0.2, salt: ''}"])
    assert ingest_images(spark, cfg, "ingest").counts.written == 96
    return root


def _cfg(root: Path, *sets: str):
    return load_config(pipeline="image_classification", overrides=[
        f"paths.data_dir={root}", "train.epochs=2", "train.lr=0.01", "train.warmup_epochs=0", "train.feed.batch_size=8",
        "train.feed.shuffle_buffer=64", *sets])


@pytest.mark.slow
def test_student_learns_from_a_registered_teacher_scored_once(spark, image_root):
    from dlspark.tracking import list_versions, resolve_tracking
    from dlspark.train.teacher import MARKER, TEACHER_COLUMN
    from pipelines.train import train_model

    train_model(spark, _cfg(image_root, "train.run_name=teacher", "mlflow.registered_model=teacher-images"), "teacher")
    student = ["train.run_name=student", "mlflow.registered_model=student-images", "train.model_options={widths: [4, 8]}",
               "train.distill.teacher=teacher-images", "train.distill.temperature=3", "train.distill.alpha=0.7"]
    report = train_model(spark, _cfg(image_root, *student), "student")

    table = image_root / "tables" / "distill" / "teacher-images-v1"
    logits = spark.read.parquet(str(table))
    images = spark.read.parquet(str(image_root / "tables" / "images"))
    assert logits.count() == images.count() == 96 and logits.where(f"{TEACHER_COLUMN} IS NULL").count() == 0
    assert json.loads((table / MARKER).read_text())["teacher"] == "models:/teacher-images/1"
    source_order = images.where("split = 'train'").select("label").toPandas()["label"]
    written = pd.concat([pd.read_parquet(f, columns=["label"]) for f in sorted((table / "split=train").glob("*.parquet"))])
    changes = lambda labels: int((labels.to_numpy()[1:] != labels.to_numpy()[:-1]).sum())  # noqa: E731
    assert changes(source_order) < 10 < changes(written["label"])   # ingest wrote classes in runs; the table mixes them
    assert report.summary["test_metrics"]["test_accuracy"] >= 0.8, report.summary["test_metrics"]
    assert report.result.model_spec["widths"] == [4, 8]
    target = resolve_tracking(load_config().mlflow, str(image_root))
    tags = target.client().get_run(report.mlflow_run_id).data.tags
    assert tags["dlspark.distill.teacher"] == "teacher-images/1" and tags["dlspark.distill.alpha"] == "0.7"
    version = {v.version: v for v in list_versions(target, "student-images")}[report.registration.version]
    assert version.tags["dlspark.distill.temperature"] == "3.0"

    mtime = (table / MARKER).stat().st_mtime
    again = train_model(spark, _cfg(image_root, *student, "train.run_name=student-2"), "student-2")   # logits reused
    assert (table / MARKER).stat().st_mtime == mtime and again.summary["epochs_trained"] == 2


@pytest.mark.slow
def test_a_teacher_of_other_classes_is_refused_before_scoring(spark, image_root):
    from pipelines.train import train_model
    from tests.inference_models import register_text_model

    register_text_model(image_root, name="text-teacher")
    with pytest.raises(ConfigError, match="text model"):
        train_model(spark, _cfg(image_root, "train.run_name=bad", "train.distill.teacher=text-teacher"), "bad")
