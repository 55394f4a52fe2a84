"""TensorFlow training (Keras CNN, custom loop, horovod.tensorflow) on tiny tables read by the real feeder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from dlspark.config import MlflowConfig  # noqa: E402
from dlspark.feed import preprocessing_spec, tf_dataset  # noqa: E402
from dlspark.models.keras_image import KerasCNNConfig, build_keras_model, config_from_spec  # noqa: E402
from dlspark.train import run_training  # noqa: E402
from dlspark.train.schedule import lr_factor  # noqa: E402
from dlspark.train.tf_loop import BEST_WEIGHTS, WarmupCosine, keras_model_spec, load_best_keras_model  # noqa: E402
from tests.test_train_loop import SIZE, image_job, write_image_table  # noqa: E402


def tf_job(table: Path, ckpt: Path, run_name: str = "tf", **train: object):
    return image_job(table, ckpt, run_name, **{"framework": "tensorflow", **train})


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


def test_warmup_cosine_matches_the_torch_schedule():
    schedule = WarmupCosine(0.4, warmup=3, total=10)
    got = [float(schedule(s)) for s in range(12)]
    np.testing.assert_allclose(got, [0.4 * lr_factor(s, 3, 10) for s in range(12)], rtol=1e-5, atol=1e-7)


def test_tf_dataset_batches_fit_the_keras_model(image_table):
    job = tf_job(image_table, Path("/unused"))
    x, y = next(iter(tf_dataset(job.train, 0, 1, 0)))
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
    assert result.history[0]["lr"] > 0 and result.history[-1]["lr"] < result.history[0]["lr"]  # warmup peak, then cosine
    assert (result.backend, result.world_size, result.resumed_from) == ("local", 1, None)
    assert (Path(result.model_path) / "saved_model.pb").is_file()


def test_saved_model_predicts_like_the_in_memory_model(local_run):
    job, result = local_run
    model = load_best_keras_model(result)
    x, _ = next(iter(tf_dataset(job.test, 0, 1, 0)))
    reloaded = tf.saved_model.load(result.model_path)
    np.testing.assert_allclose(reloaded.serve(x).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_rerun_with_the_same_name_resumes_without_retraining(local_run):
    job, first = local_run
    again = run_training(job, "local")
    assert again.resumed_from is not None and again.resumed_from.endswith("ckpt-2")
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
def test_horovod_two_processes_train_tf(spark, image_table, tmp_path):
    job = tf_job(image_table, tmp_path, run_name="hvd", epochs=1, num_workers=2)
    result = run_training(job, "horovod", spark=spark)
    assert (result.backend, result.world_size) == ("horovod", 2)
    assert result.history[0]["steps"] == 8  # 256 rows / 2 ranks / batch 16
    assert result.test_metrics["test_count"] == 64 and result.test_metrics["test_accuracy"] >= 0.9
    assert (tmp_path / "hvd" / BEST_WEIGHTS).is_file() and (tmp_path / "hvd" / "saved_model" / "saved_model.pb").is_file()
