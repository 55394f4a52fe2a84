"""ONNX export + OnnxPredictor, and KerasPredictor, against tiny models in a throwaway embedded MLflow store."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dlspark.config import MlflowConfig
from dlspark.feed.decode import normalize_images
from dlspark.tracking import (
    TrackingError,
    log_keras_model,
    log_torch_model,
    register_and_promote,
    resolve_tracking,
    start_run,
    using_target,
)

torch = pytest.importorskip("torch")
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("onnxruntime")

from dlspark.export.onnx import (  # noqa: E402
    SOURCE_TAG,
    ParityError,
    _logged_example,
    check_parity,
    export_onnx,
    export_registered_onnx,
)
from dlspark.inference.onnx_predictor import OnnxPredictor  # noqa: E402
from dlspark.inference.predictors import softmax  # noqa: E402
from dlspark.models import build_model  # noqa: E402

SIZE, CLASSES = 16, 3
MEAN, STD = (0.5,), (0.25,)
LABELS = {"labels": {"a": 0, "b": 1, "c": 2}}
PREPROCESSING = {"kind": "image", "mean": list(MEAN), "std": list(STD), "image_size": [SIZE, SIZE]}
SPEC = {"name": "cnn", "in_channels": 1, "num_classes": CLASSES, "widths": [4, 8], "hidden": 8}


def _tiny_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC).eval()


def _images(n: int, size: int = SIZE, channels: int = 1, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _torch_probabilities(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize_images(pixels, MEAN, STD, channels_last=False)))
    return torch.softmax(logits, dim=1).numpy()


def _download(target, uri: str, dst: Path) -> Path:
    with using_target(target):
        return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dst)))


@pytest.fixture(scope="module")
def onnx_store(tmp_path_factory):
    """A torch CNN registered as ``tiny`` (champion) as training logs it, its ONNX export registered as ``tiny-onnx``."""
    target = resolve_tracking(MlflowConfig(), str(tmp_path_factory.mktemp("data")))
    model = _tiny_cnn()
    example = normalize_images(_images(4), MEAN, STD, channels_last=False)
    with start_run(target, "tests", "torch") as run:
        log_torch_model(model, example, {"labels.json": LABELS, "preprocessing.json": PREPROCESSING,
                                         "model_spec.json": SPEC})
    register_and_promote(target, "tiny", run.info.run_id, "model", "val_accuracy", 0.8)
    result = export_registered_onnx(target, "models:/tiny@champion", "tiny-onnx", experiment="tests")
    model_dir = _download(target, result.model_uri, tmp_path_factory.mktemp("onnx-model"))
    return target, model, result, model_dir


def test_export_onnx_keeps_the_batch_axis_dynamic_and_matches_torch(tmp_path):
    model = _tiny_cnn()
    example = np.zeros((2, 1, SIZE, SIZE), np.float32)
    path = export_onnx(model, example, tmp_path / "out" / "model.onnx")
    batch = np.random.default_rng(0).standard_normal((7, 1, SIZE, SIZE)).astype(np.float32)
    report = check_parity(model, path, batch)
    assert path.is_file()
    assert report.rows == 7
    assert report.agreement == 1.0
    assert report.max_abs_diff < 1e-4


def test_check_parity_raises_when_the_onnx_model_disagrees(tmp_path):
    model = _tiny_cnn()
    path = export_onnx(model, np.zeros((1, 1, SIZE, SIZE), np.float32), tmp_path / "model.onnx")
    flipped = copy.deepcopy(model)
    with torch.no_grad():  # negated logits: every argmax becomes the argmin
        flipped.head[-1].weight.neg_()
        flipped.head[-1].bias.neg_()
    batch = np.random.default_rng(0).standard_normal((8, 1, SIZE, SIZE)).astype(np.float32)
    with pytest.raises(ParityError, match="only 0.0% of 8 rows"):
        check_parity(flipped, path, batch)


def test_export_onnx_takes_the_torch_export_module_mlflow_loads(onnx_store, tmp_path):
    target, model = onnx_store[0], onnx_store[1]
    exported = mlflow.pytorch.load_model(str(_download(target, "models:/tiny/1", tmp_path / "torch")))
    assert hasattr(exported, "graph")  # MLflow 3's default "pt2" format, not the eager module
    path = export_onnx(exported, np.zeros((1, 1, SIZE, SIZE), np.float32), tmp_path / "model.onnx")
    report = check_parity(model, path, np.random.default_rng(2).standard_normal((5, 1, SIZE, SIZE)).astype(np.float32))
    assert (report.rows, report.agreement) == (5, 1.0)
    assert report.max_abs_diff < 1e-4


def test_export_onnx_rejects_a_batch_that_is_not_images(tmp_path):
    with pytest.raises(ValueError, match=r"float32 \[B, C, H, W\]"):
        export_onnx(_tiny_cnn(), np.zeros((2, SIZE * SIZE), np.float32), tmp_path / "model.onnx")


def test_registered_onnx_version_carries_metric_parity_and_extras(onnx_store):
    target, _, result, model_dir = onnx_store
    client = target.client()
    version = client.get_model_version("tiny-onnx", result.version)
    assert (result.version, result.promoted) == ("1", True)
    assert version.tags["dlspark.metric_name"] == "val_accuracy"
    assert float(version.tags["dlspark.metric_value"]) == 0.8
    assert version.tags[SOURCE_TAG] == "models:/tiny/1"  # the alias, pinned
    assert client.get_run(result.run_id).data.metrics["onnx_agreement"] == 1.0
    assert result.parity.max_abs_diff < 1e-4
    assert "onnx" in (model_dir / "MLmodel").read_text()
    assert sorted(p.name for p in (model_dir / "extras").iterdir()) == ["labels.json", "model_spec.json",
                                                                         "preprocessing.json"]
    assert json.loads((model_dir / "extras" / "preprocessing.json").read_text()) == PREPROCESSING


def test_onnx_predictor_matches_the_torch_model_on_uint8_images(onnx_store):
    _, model, _, model_dir = onnx_store
    pixels = _images(9, seed=3)
    got = OnnxPredictor(str(model_dir), threads=1).predict_images(pixels, MEAN, STD)
    expected = _torch_probabilities(model, pixels)
    assert got.dtype == np.float32 and got.shape == (9, CLASSES)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))


def test_onnx_predictor_rejects_images_of_another_size_or_channel_count(onnx_store):
    predictor = OnnxPredictor(str(onnx_store[3]))
    with pytest.raises(ValueError, match=r"takes \(H, W, C\) \(16, 16, 1\) images, got \(8, 8, 1\)"):
        predictor.predict_images(_images(2, size=8), MEAN, STD)
    with pytest.raises(ValueError, match="one value per channel"):
        predictor.predict_images(_images(2), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict_images(_images(2).astype(np.float32), MEAN, STD)


def test_onnx_predictor_refuses_token_inputs(onnx_store):
    with pytest.raises(ValueError, match="image models only"):
        OnnxPredictor(str(onnx_store[3])).predict_tokens(np.zeros((1, 4), np.int64), np.ones((1, 4), np.int64))


def test_onnx_predictor_names_the_missing_onnx_file(onnx_store, tmp_path):
    model_dir = Path(shutil.copytree(onnx_store[3], tmp_path / "model"))
    (model_dir / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="model file 'model.onnx', which does not exist"):
        OnnxPredictor(str(model_dir))
    with pytest.raises(FileNotFoundError, match="has no MLmodel file"):
        OnnxPredictor(str(tmp_path))


def test_onnx_predictor_refuses_a_model_without_onnx_flavor(onnx_store, tmp_path):
    target = onnx_store[0]
    torch_dir = _download(target, "models:/tiny/1", tmp_path / "torch")
    with pytest.raises(ValueError, match=r"no onnx flavor \(it has \['python_function', 'pytorch'\]\)"):
        OnnxPredictor(str(torch_dir))


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/tiny", "models:/tiny/latest", "models:/@champion"])
def test_export_registered_onnx_needs_a_registered_version(onnx_store, uri):
    with pytest.raises(TrackingError, match="not a registered model version"):
        export_registered_onnx(onnx_store[0], uri, "tiny-onnx", experiment="tests")


def test_export_registered_onnx_names_an_unknown_alias(onnx_store):
    with pytest.raises(TrackingError, match="cannot resolve model 'models:/tiny@nope'"):
        export_registered_onnx(onnx_store[0], "models:/tiny@nope", "tiny-onnx", experiment="tests")


def test_export_registered_onnx_needs_the_source_promotion_metric(onnx_store):
    target = onnx_store[0]
    client = target.client()
    first = client.get_model_version("tiny", "1")
    bare = client.create_model_version("tiny", first.source, run_id=first.run_id)  # no metric tags
    client.set_registered_model_alias("tiny", "bare", bare.version)
    with pytest.raises(TrackingError, match="has no dlspark.metric_name/dlspark.metric_value tags"):
        export_registered_onnx(target, "models:/tiny@bare", "tiny-onnx", experiment="tests")


def test_logged_example_asks_for_inputs_when_the_model_has_none(tmp_path):
    mlflow.models.Model().save(str(tmp_path / "MLmodel"))
    with pytest.raises(TrackingError, match="pass inputs="):
        _logged_example(tmp_path, "models:/x/1")


# --- Keras --------------------------------------------------------------------------------------------------

K_SHAPE, K_MEAN, K_STD = (8, 8, 3), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def keras_store(tmp_path_factory):
    """A tiny Keras CNN logged with log_keras_model and downloaded; the in-memory model beside it."""
    pytest.importorskip("tensorflow")
    from dlspark.models.keras_image import build_keras_model

    model = build_keras_model({"name": "keras_cnn", "image_shape": list(K_SHAPE), "num_classes": CLASSES,
                               "widths": [4], "hidden": 8})
    target = resolve_tracking(MlflowConfig(), str(tmp_path_factory.mktemp("kdata")))
    example = normalize_images(_images(2, size=8, channels=3), K_MEAN, K_STD, channels_last=True)
    with start_run(target, "tests", "keras"):
        info = log_keras_model(model, example, {"labels.json": LABELS})
    return model, _download(target, info.model_uri, tmp_path_factory.mktemp("keras-model"))


def _keras_probabilities(model, pixels: np.ndarray) -> np.ndarray:
    logits = np.asarray(model(normalize_images(pixels, K_MEAN, K_STD, channels_last=True), training=False))
    return softmax(logits)


def test_keras_is_logged_as_a_saved_model_with_a_serve_endpoint(keras_store):
    model_dir = keras_store[1]
    assert (model_dir / "data" / "model" / "saved_model.pb").is_file()
    assert "save_exported_model: true" in (model_dir / "MLmodel").read_text()


def test_keras_predictor_matches_the_keras_model(keras_store):
    from dlspark.inference.keras_predictor import KerasPredictor

    model, model_dir = keras_store
    pixels = _images(5, size=8, channels=3, seed=4)
    got = KerasPredictor(str(model_dir)).predict_images(pixels, K_MEAN, K_STD)
    assert got.dtype == np.float32 and got.shape == (5, CLASSES)
    np.testing.assert_allclose(got, _keras_probabilities(model, pixels), atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_keras_predictor_reads_the_tensorflow_flavor_too(keras_store, tmp_path):
    from dlspark.inference.keras_predictor import KerasPredictor

    model = keras_store[0]
    mlflow.tensorflow.save_model(model, str(tmp_path / "tf"), pip_requirements=["tensorflow"])  # no slow inference
    pixels = _images(3, size=8, channels=3, seed=5)
    got = KerasPredictor(str(tmp_path / "tf")).predict_images(pixels, K_MEAN, K_STD)
    np.testing.assert_allclose(got, _keras_probabilities(model, pixels), atol=1e-5)


def test_keras_predictor_rejects_bad_inputs_and_tokens(keras_store):
    from dlspark.inference.keras_predictor import KerasPredictor

    predictor = KerasPredictor(str(keras_store[1]))
    with pytest.raises(ValueError, match=r"takes \(H, W, C\) \(8, 8, 3\) images, got \(16, 16, 3\)"):
        predictor.predict_images(_images(1, size=16, channels=3), K_MEAN, K_STD)
    with pytest.raises(ValueError, match="image models"):
        predictor.predict_tokens(np.zeros((1, 4), np.int64), np.ones((1, 4), np.int64))


def test_keras_predictor_names_the_missing_saved_model(keras_store, tmp_path):
    from dlspark.inference.keras_predictor import KerasPredictor

    model_dir = Path(shutil.copytree(keras_store[1], tmp_path / "model"))
    (model_dir / "data" / "model" / "saved_model.pb").unlink()
    with pytest.raises(FileNotFoundError, match=r"saved_model.pb is missing"):
        KerasPredictor(str(model_dir))


def test_keras_predictor_warns_when_tensorflow_already_runs_with_other_threads(keras_store, caplog):
    from dlspark.inference.keras_predictor import KerasPredictor

    with caplog.at_level("WARNING", logger="dlspark.inference.keras_predictor"):
        KerasPredictor(str(keras_store[1]), threads=1)  # TF started when the fixture built the model
    assert "not the 1 asked for" in caplog.text
