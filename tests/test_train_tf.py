"""TensorFlow training (Keras CNN, custom loop, horovod.tensorflow) on tiny tables read by the real feeder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.stacks import needs

tf = pytest.importorskip("tensorflow")

from dlspark.config import FeedConfig, MlflowConfig, TrainConfig  # noqa: E402
from dlspark.feed import make_spec, preprocessing_spec, tf_dataset  # noqa: E402
from dlspark.models.keras_image import KerasCNNConfig, build_keras_model, config_from_spec  # noqa: E402
from dlspark.train import TrainJob, run_training  # noqa: E402
from dlspark.train.schedule import lr_factor  # noqa: E402
from dlspark.train.tf_loop import BEST_WEIGHTS, keras_model_spec, load_best_keras_model  # noqa: E402

SIZE = 8


def write_image_table(root: Path, rows: dict[str, int], seed: int = 0) -> Path:
    """Hive-partitioned ``split=<name>/part-0.parquet`` of 8x8x1 images: class 1 ("top") has a bright top half,
    class 0 ("bottom") a bright bottom half, both with noise (separable, invariant to horizontal flips)."""
    rng = np.random.default_rng(seed)
    for split, n in rows.items():
        labels = np.arange(n) % 2
        pixels = rng.integers(0, 90, size=(n, SIZE, SIZE, 1), dtype=np.uint8)
        for i, label in enumerate(labels):
            pixels[i, slice(0, SIZE // 2) if label == 1 else slice(SIZE // 2, SIZE)] += 120
        table = pa.table({
            "label": pa.array(["top" if v else "bottom" for v in labels]),
            "label_index": pa.array(labels, pa.int32()),
            "pixels": pa.array([p.tobytes() for p in pixels], pa.binary()),
            "shape": pa.array([[SIZE, SIZE, 1]] * n, pa.list_(pa.int32())),
        })
        (root / f"split={split}").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"split={split}" / "part-0.parquet", row_group_size=64)
    return root


def tf_job(table: Path, ckpt: Path, run_name: str = "tf", **train: object) -> TrainJob:
    """A TensorFlow TrainJob over ``table`` with a small Keras CNN; ``train`` overrides TrainConfig fields."""
    feed = FeedConfig(batch_size=16, shuffle_buffer=64, prefetch_batches=2, reader_threads=1, augment=False)
    values = dict(framework="tensorflow", epochs=2, lr=0.01, warmup_epochs=0.2, early_stopping_patience=0, feed=feed)
    cfg = TrainConfig(**{**values, **train})
    specs = {split: make_spec(cfg.feed, kind="image", files=tuple(str(p) for p in sorted((table / f"split={split}").glob("*.parquet"))),
                              split=split, seed=cfg.seed, image_shape=(SIZE, SIZE, 1), normalize=((0.5,), (0.25,)))
             for split in ("train", "val", "test")}
    model = {"name": "cnn", "widths": [8, 16], "hidden": 16, "dropout": 0.1}
    return TrainJob(config=cfg, train=specs["train"], val=specs["val"], test=specs["test"], num_classes=2,
                    labels=("bottom", "top"), checkpoint_dir=str(ckpt), run_name=run_name, model=model)


@pytest.fixture(scope="module")
def image_table(tmp_path_factory) -> Path:
    return write_image_table(tmp_path_factory.mktemp("tf_images"), {"train": 256, "val": 64, "test": 64})


@pytest.fixture(scope="module")
def local_run(image_table, tmp_path_factory):
    """One local TensorFlow run of 2 epochs: (job, result)."""
    job = tf_job(image_table, tmp_path_factory.mktemp("tf_ckpt"))
    return job, run_training(job, "local")


def test_keras_cnn_maps_nhwc_images_to_float32_logits():
    model = build_keras_model(KerasCNNConfig(image_shape=(8, 8, 3), num_classes=4, widths=(4, 8), hidden=8))
    out = model(np.zeros((5, 8, 8, 3), np.float32), training=False)
    assert out.shape == (5, 4) and out.dtype == tf.float32
    assert config_from_spec(KerasCNNConfig(widths=(4,)).spec()) == KerasCNNConfig(widths=(4,))


def test_keras_cnn_rejects_too_small_images_and_foreign_specs():
    with pytest.raises(ValueError, match="at least 8 pixels a side"):
        KerasCNNConfig(image_shape=(4, 4, 1), widths=(8, 16, 32))
    with pytest.raises(ValueError, match="expected 'keras_cnn'"):
        config_from_spec({"name": "resnet"})


def test_tf_dataset_batches_fit_the_keras_model(image_table):
    job = tf_job(image_table, Path("/unused"))
    x, y, _ = next(iter(tf_dataset(job.train, 0, 1, 0)))
    assert x.shape == (16, SIZE, SIZE, 1) and x.dtype == tf.float32 and y.dtype == tf.int64
    assert build_keras_model(keras_model_spec(job))(x).shape == (16, 2)


def test_model_spec_refuses_models_other_than_the_cnn(image_table, tmp_path):
    job = tf_job(image_table, tmp_path, model="resnet")
    with pytest.raises(ValueError, match="set train.model=cnn"):
        keras_model_spec(job)


def test_local_tf_training_learns_and_exports(local_run):
    job, result = local_run
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test_metrics["test_accuracy"] >= 0.9 and result.test_metrics["test_count"] == 64
    assert math.isclose(result.best_metric, result.history[result.best_epoch]["val_accuracy"])
    # the torch loop's schedule, step for step: 16 steps an epoch, warmup ceil(0.2 * 16) = 4 steps, 32 in all
    assert [h["lr"] for h in result.history] == pytest.approx([0.01 * lr_factor(16 * (e + 1), 4, 32) for e in (0, 1)])
    assert [h["steps"] for h in result.history] == [16, 16]
    assert (result.backend, result.world_size, result.resumed_from) == ("local", 1, None)
    assert (Path(result.model_path) / "saved_model.pb").is_file()


def test_saved_model_predicts_like_the_in_memory_model(local_run):
    job, result = local_run
    model = load_best_keras_model(result)
    x, _, _ = next(iter(tf_dataset(job.test, 0, 1, 0)))
    reloaded = tf.saved_model.load(result.model_path)
    np.testing.assert_allclose(reloaded.serve(x).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_rerun_with_the_same_name_resumes_without_retraining(local_run):
    job, first = local_run
    again = run_training(job, "local")
    assert again.resumed_from is not None and again.resumed_from.endswith("ckpt-32")  # numbered by global step
    assert [h["epoch"] for h in again.history] == [0, 1] and again.timing["train_steps"] == 0
    assert again.test_metrics["test_accuracy"] == pytest.approx(first.test_metrics["test_accuracy"])


def test_keras_model_logs_to_mlflow_as_a_saved_model(local_run, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from dlspark.tracking import log_keras_model, resolve_tracking, start_run

    job, result = local_run
    model = load_best_keras_model(result)
    x = next(iter(tf_dataset(job.test, 0, 1, 0)))[0].numpy()[:4]
    target = resolve_tracking(MlflowConfig(), str(tmp_path))
    with start_run(target, "tf", "keras"):
        info = log_keras_model(model, x, {"labels.json": {"labels": {"bottom": 0, "top": 1}},
                                          "preprocessing.json": preprocessing_spec(job.test)})
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        folder = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl")))
    np.testing.assert_allclose(np.asarray(loaded.predict(x)), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    assert (folder / "data" / "model" / "saved_model.pb").is_file()
    assert json.loads((folder / "extras" / "preprocessing.json").read_text())["image_shape"] == [SIZE, SIZE, 1]
    assert np.asarray(json.loads((folder / "extras" / "input_example.json").read_text())).shape == (4, SIZE, SIZE, 1)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, SIZE, SIZE, 1)


@pytest.mark.slow
@needs("horovod")
def test_horovod_two_processes_train_tf(spark, image_table, tmp_path):
    job = tf_job(image_table, tmp_path, run_name="hvd", epochs=1, num_workers=2)
    result = run_training(job, "horovod", spark=spark)
    assert (result.backend, result.world_size) == ("horovod", 2)
    assert result.history[0]["steps"] == 8  # 256 rows / 2 ranks / batch 16
    assert result.test_metrics["test_count"] == 64 and result.test_metrics["test_accuracy"] >= 0.9
    assert (tmp_path / "hvd" / BEST_WEIGHTS).is_file() and (tmp_path / "hvd" / "saved_model" / "saved_model.pb").is_file()


def test_training_report_of_a_keras_run(local_run, tmp_path):
    from dlspark.train.run_report import write_run_report

    job, result = local_run
    page = write_run_report(result, job.test, job.labels, tmp_path / "report", {"run": "tf"})
    text = page.read_text()
    assert "Per class (test split)" in text and f"<tr><th>test rows</th><td>{int(result.test_metrics['test_count'])}</td>" in text
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000


@pytest.mark.slow
def test_multiworker_mirrored_two_spark_tasks_train_tf(spark, image_table, tmp_path):
    job = tf_job(image_table, tmp_path, run_name="mwms", epochs=1, num_workers=2, checkpoint_every_steps=3)
    result = run_training(job, "tf_multiworker", spark=spark)
    assert (result.backend, result.world_size) == ("tf_multiworker", 2)
    assert result.history[0]["steps"] == 8  # 256 rows / 2 ranks / batch 16
    assert result.test_metrics["test_count"] == 64 and result.test_metrics["test_accuracy"] >= 0.9
    assert result.history[0]["lr"] == pytest.approx(0.02 * lr_factor(8, 2, 8))   # peak 0.01 x 2 workers (linear)
    assert (tmp_path / "mwms" / BEST_WEIGHTS).is_file() and (tmp_path / "mwms" / "saved_model" / "saved_model.pb").is_file()
    assert not list((tmp_path / "mwms").glob(".worker-*")), "worker 1's scratch checkpoints must be removed"
    checkpoints = sorted(p.name for p in (tmp_path / "mwms" / "tf_ckpt").glob("ckpt-*.index"))
    assert checkpoints == ["ckpt-6.index", "ckpt-8.index"]   # every 3 steps (3, 6) and the epoch end (8); 2 kept


def test_multiworker_refuses_a_torch_job():
    with pytest.raises(ValueError, match="tf_multiworker runs TensorFlow only"):
        TrainConfig(framework="torch", backend="tf_multiworker")


def test_tf_config_lists_every_worker_and_this_index():
    from dlspark.train.tf_multiworker import tf_config

    assert tf_config(["h1:1", "h2:2"], 1) == {"cluster": {"worker": ["h1:1", "h2:2"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="outside the cluster"):
        tf_config(["h1:1"], 1)
