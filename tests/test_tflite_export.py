"""TFLite conversion of a registered Keras image model: parity, registration, the pyfunc model, bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlspark.config import MlflowConfig
from dlspark.export.parity import SplitSource
from dlspark.tracking import (
    TrackingError,
    log_keras_model,
    register_and_promote,
    resolve_tracking,
    start_run,
    using_target,
)

pytest.importorskip("tensorflow")
mlflow = pytest.importorskip("mlflow")

from dlspark.export.tflite import (  # noqa: E402
    FORMAT_TAG,
    QUANTIZATION_TAG,
    SOURCE_TAG,
    ParityError,
    TFLiteError,
    TFLiteRunner,
    check_parity,
    convert_saved_model,
    export_registered_tflite,
)

SHAPE, CLASSES, NAME = (8, 8, 1), 3, "tiny-keras"
# widths 8, 16: the second block's 3x3x16x16 kernel is large enough (>= 1024 weights) for dynamic-range int8
SPEC = {"name": "keras_cnn", "image_shape": list(SHAPE), "num_classes": CLASSES, "widths": [8, 16], "hidden": 16}
EXTRAS = {"labels.json": {"labels": ["a", "b", "c"]}, "model_spec.json": SPEC,
          "preprocessing.json": {"kind": "image", "mean": [0.5], "std": [0.25], "image_shape": list(SHAPE),
                                 "input_column": "pixels", "label_column": "label_index", "label_map": None}}


def _inputs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


def _write_test_split(root: Path, n: int = 64) -> Path:
    """A parquet table with ``split=test/``: n uint8 8x8x1 images as raw bytes, labels 0..2."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pixels = np.random.default_rng(5).integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    (root / "split=test").mkdir(parents=True)
    pq.write_table(pa.table({"pixels": pa.array([p.tobytes() for p in pixels], pa.binary()),
                             "label_index": pa.array(np.arange(n) % CLASSES, pa.int64())}),
                   root / "split=test" / "part-0.parquet")
    return root


@pytest.fixture(scope="module")
def keras_registry(tmp_path_factory):
    """A seeded tiny Keras CNN logged as training logs it, registered as NAME (champion), then exported twice."""
    import keras

    from dlspark.models.keras_image import build_keras_model

    keras.utils.set_random_seed(0)
    model = build_keras_model(SPEC)
    target = resolve_tracking(MlflowConfig(), str(tmp_path_factory.mktemp("data")))
    with start_run(target, "tests", "keras") as run:
        log_keras_model(model, _inputs(4, seed=0), EXTRAS)
    register_and_promote(target, NAME, run.info.run_id, "model", "val_accuracy", 0.5)
    source, tables = f"models:/{NAME}@champion", tmp_path_factory.mktemp("tables")
    missing = SplitSource(str(tables / "nothing"), "parquet", "test")  # falls back to the logged example
    fp32 = export_registered_tflite(target, source, f"{NAME}-tflite", parity_split=missing, experiment="tests")
    split = SplitSource(str(_write_test_split(tables / "images")), "parquet", "test")
    int8 = export_registered_tflite(target, source, f"{NAME}-tflite-int8", quantization="dynamic_int8",
                                    parity_split=split, min_agreement=0.9, experiment="tests")
    return target, model, fp32, int8


@pytest.fixture(scope="module")
def saved_model(keras_registry, tmp_path_factory):
    model = keras_registry[1]
    path = tmp_path_factory.mktemp("sm") / "model"
    model.export(str(path), verbose=False)
    return path


def test_fp32_export_reproduces_the_keras_model_and_is_registered_with_its_tags(keras_registry):
    target, _, fp32, _ = keras_registry
    assert (fp32.version, fp32.promoted, fp32.quantization) == ("1", True, "fp32")
    assert fp32.parity.rows == 4 and fp32.parity.agreement == 1.0 and fp32.parity.max_abs_diff < 1e-4
    tags = target.client().get_model_version(f"{NAME}-tflite", "1").tags
    assert tags[SOURCE_TAG] == f"models:/{NAME}/1"
    assert (tags[FORMAT_TAG], tags[QUANTIZATION_TAG]) == ("tflite", "fp32")
    run = target.client().get_run(fp32.run_id).data
    assert run.params["parity_data"] == "the logged input example (4 rows)"
    assert run.metrics["tflite_agreement"] == 1.0 and run.metrics["tflite_size_bytes"] == fp32.size_bytes > 0


def test_dynamic_int8_export_is_smaller_and_close_but_not_identical(keras_registry):
    target, _, fp32, int8 = keras_registry
    assert int8.quantization == "dynamic_int8" and int8.parity.rows == 64  # every row of the test split
    assert int8.size_bytes < fp32.size_bytes
    assert 0 < int8.parity.max_abs_diff < 0.5 and int8.parity.agreement >= 0.9
    run = target.client().get_run(int8.run_id).data
    assert run.params["parity_data"].startswith("test split of ")
    assert 0 <= run.metrics["tflite_accuracy"] <= 1 and 0 <= run.metrics["source_accuracy"] <= 1
    assert target.client().get_model_version(f"{NAME}-tflite-int8", "1").tags[QUANTIZATION_TAG] == "dynamic_int8"


def test_rerun_returns_the_existing_version(keras_registry):
    target, _, fp32, _ = keras_registry
    again = export_registered_tflite(target, f"models:/{NAME}/1", f"{NAME}-tflite", experiment="tests")
    assert (again.model_uri, again.run_id, again.size_bytes) == (fp32.model_uri, fp32.run_id, fp32.size_bytes)
    assert again.parity.agreement == 1.0
    assert len(target.client().search_model_versions(f"name='{NAME}-tflite'")) == 1


def test_pyfunc_model_loads_with_extras_and_predicts_the_keras_classes(keras_registry, tmp_path):
    target, model, fp32, _ = keras_registry
    x = _inputs(10, seed=3)
    with using_target(target):
        pyfunc = mlflow.pyfunc.load_model(fp32.model_uri)
        model_dir = mlflow.artifacts.download_artifacts(fp32.model_uri, dst_path=str(tmp_path))
    got = np.asarray(pyfunc.predict(x))
    expected = np.asarray(model(x, training=False))
    assert got.shape == (10, CLASSES)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert {"labels.json", "preprocessing.json", "input_example.json"} <= {p.name for p in (Path(model_dir) / "extras").iterdir()}


def test_batch_inference_predictor_scores_uint8_pixels_like_the_keras_model(keras_registry, tmp_path):
    from dlspark.inference.model import model_flavor
    from dlspark.inference.predictors import load_predictor

    target, model, fp32, _ = keras_registry
    with using_target(target):
        model_dir = mlflow.artifacts.download_artifacts(fp32.model_uri, dst_path=str(tmp_path))
    assert model_flavor(model_dir) == "tflite"
    predictor = load_predictor(model_dir, "tflite", threads=1)
    pixels = np.random.default_rng(7).integers(0, 256, (6, *SHAPE), dtype=np.uint8)
    probs = predictor.predict_images(pixels, [0.5], [0.25])
    expected = np.asarray(model((pixels.astype(np.float32) / 255 - 0.5) / 0.25, training=False))
    np.testing.assert_array_equal(probs.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError):
        predictor.predict_images(np.zeros((2, 4, 4, 1), np.uint8), [0.5], [0.25])


def test_failed_parity_registers_nothing(keras_registry):
    target = keras_registry[0]
    with pytest.raises(ParityError, match="need 101.0%"):
        export_registered_tflite(target, f"models:/{NAME}/1", f"{NAME}-strict", min_agreement=1.01, experiment="tests")
    assert target.client().search_model_versions(f"name='{NAME}-strict'") == []


def test_parity_check_catches_a_model_that_predicts_other_classes(saved_model, tmp_path):
    runner = TFLiteRunner(convert_saved_model(saved_model, tmp_path / "m.tflite"))
    x = _inputs(20, seed=4)
    assert check_parity(runner, runner, x, batch_size=7).agreement == 1.0  # batches of 7, 7, 6: resized per call
    with pytest.raises(ParityError, match="only 0.0% of 20 rows"):
        check_parity(lambda b: -runner(b), runner, x)


def test_tampered_or_truncated_tflite_file_gives_a_clear_error(saved_model, tmp_path):
    good = convert_saved_model(saved_model, tmp_path / "good.tflite").read_bytes()
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer" * 64)
    (tmp_path / "cut.tflite").write_bytes(good[: len(good) // 2])
    for name in ("junk.tflite", "cut.tflite"):
        with pytest.raises(TFLiteError, match="is not a loadable TFLite model"):
            TFLiteRunner(tmp_path / name)


def test_wrong_input_shape_or_options_are_refused(saved_model, tmp_path):
    runner = TFLiteRunner(convert_saved_model(saved_model, tmp_path / "m.tflite"))
    for bad in (np.zeros((2, 28, 28, 1), np.float32), np.zeros((2, 1, 8, 8), np.float32), np.zeros((0, *SHAPE)), [1.0]):
        with pytest.raises(TFLiteError, match=r"NHWC batch \[B, 8, 8, 1\]"):
            runner(bad)
    with pytest.raises(ValueError, match="quantization must be one of"):
        convert_saved_model(saved_model, tmp_path / "x.tflite", quantization="int4")
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        convert_saved_model(tmp_path, tmp_path / "x.tflite")


def test_source_that_is_not_a_keras_saved_model_is_refused(keras_registry):
    target, _, fp32, _ = keras_registry  # the registered TFLite version: a python_function model, no SavedModel
    with pytest.raises(TrackingError, match="not a Keras model exported as a SavedModel"):
        export_registered_tflite(target, fp32.model_uri, f"{NAME}-tflite-again", experiment="tests")
    with pytest.raises(TrackingError, match="not a registered model version"):
        export_registered_tflite(target, f"runs:/{fp32.run_id}/model", f"{NAME}-tflite-again", experiment="tests")
