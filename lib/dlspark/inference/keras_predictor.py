"""Batch inference with a Keras image model logged to MLflow, on TensorFlow.

What :func:`dlspark.tracking.log_keras_model` logs (mlflow 3.17, ``mlflow.keras`` flavor with
``save_exported_model: true``) is a TF SavedModel at ``<model>/data/model`` whose ``serve`` endpoint is the
model's ``call`` in inference mode: float32 NHWC ``[B, H, W, C]`` in, logits ``[B, classes]`` out. It loads
with ``tf.saved_model.load`` alone (no Keras model code). Also read: the keras flavor without
``save_exported_model`` (``data/model.keras``), and the ``tensorflow`` flavor (``data/model.keras`` for
Keras models, or a SavedModel with a ``serve`` endpoint in ``saved_model_dir``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dlspark.feed.decode import normalize_images
from dlspark.inference.model import mlmodel_flavors
from dlspark.inference.predictors import check_pixels, softmax

log = logging.getLogger(__name__)

ModelCall = Callable[[np.ndarray], Any]  # float32 NHWC batch -> logits tensor


class KerasPredictor:
    """Predictor (see ``dlspark.inference.predictors``) over a downloaded MLflow keras / tensorflow model.

    Parameters
    ----------
    model_dir
        The downloaded model folder, the one holding ``MLmodel``.
    threads
        TensorFlow's intra-op threads (e.g. the task's CPUs; inter-op is then 1). TensorFlow takes them
        only before its runtime starts; later they are left as they are, with a warning.
    """

    def __init__(self, model_dir: str, threads: int | None = None) -> None:
        if threads is not None:
            _set_tf_threads(int(threads))
        self.model_dir = Path(model_dir)
        self._call, self.image_shape = load_keras_call(self.model_dir)

    def predict_images(self, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        """uint8 ``[n, H, W, C]`` -> float32 class probabilities ``[n, classes]``."""
        check_pixels(pixels, mean, std, self.image_shape)
        x = normalize_images(pixels, tuple(mean), tuple(std), channels_last=True)  # (n, H, W, C)
        return softmax(np.asarray(self._call(x)))

    def predict_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise ValueError("the Keras models here are image models; score text with the pytorch flavor "
                         "(the registered torch sentiment model) instead")


class TFLitePredictor(KerasPredictor):
    """Predictor over a ``.tflite`` export (the ``python_function`` model that ``jobs/models.py export-tflite``
    registers): the same NHWC normalisation as the Keras model it came from, run by LiteRT."""

    def __init__(self, model_dir: str, threads: int | None = None) -> None:
        from dlspark.models.tflite import ARTIFACT, TFLiteRunner

        self.model_dir = Path(model_dir)
        artifact = mlmodel_flavors(self.model_dir)["python_function"]["artifacts"][ARTIFACT]["path"]
        runner = TFLiteRunner(self.model_dir / artifact, threads=threads)
        self._call, self.image_shape = runner, runner.image_shape


def load_keras_call(model_dir: Path) -> tuple[ModelCall, tuple[Any, ...]]:
    """(inference call, model input ``(H, W, C)`` with None for free sizes) of an MLflow keras/tensorflow model.

    Raises
    ------
    FileNotFoundError
        When the folder has no MLmodel or the model files its flavor names.
    ValueError
        When the model has neither flavor, or is a SavedModel without a ``serve`` endpoint.
    """
    flavors = mlmodel_flavors(model_dir)
    if "keras" in flavors:
        conf = flavors["keras"]
        base = model_dir / conf.get("data", "data") / "model"
        return _saved_model_call(base) if conf.get("save_exported_model") else _keras_file_call(base.with_suffix(".keras"))
    tf_conf = flavors.get("tensorflow", {})
    if tf_conf.get("model_type") == "keras":
        return _keras_file_call(model_dir / tf_conf.get("data", "data") / "model.keras")
    if tf_conf.get("model_type") == "tf2-module":
        return _saved_model_call(model_dir / tf_conf["saved_model_dir"])
    raise ValueError(f"{model_dir}/MLmodel has no Keras model (flavors {sorted(flavors)}, tensorflow model_type "
                     f"{tf_conf.get('model_type')!r}); log Keras models with dlspark.tracking.log_keras_model")


def _saved_model_call(path: Path) -> tuple[ModelCall, tuple[Any, ...]]:
    import tensorflow as tf

    _require(path / "saved_model.pb")
    loaded = tf.saved_model.load(str(path))
    if not hasattr(loaded, "serve"):
        raise ValueError(f"the SavedModel at {path} has no 'serve' endpoint; export the Keras model with "
                         "model.export(path) or log it with dlspark.tracking.log_keras_model")
    shape = tuple(loaded.serve.input_signature[0].shape)  # (None, H, W, C)
    # Call through `loaded`: the endpoint alone does not keep the model's variables alive.
    return (lambda x: loaded.serve(x)), shape[1:]


def _keras_file_call(path: Path) -> tuple[ModelCall, tuple[Any, ...]]:
    import keras

    _require(path)
    model = keras.saving.load_model(str(path), compile=False)
    return (lambda x: model(x, training=False)), tuple(model.input_shape[1:])


def _require(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} is missing; download the whole model folder "
                                "(mlflow.artifacts.download_artifacts(model_uri))")


def _set_tf_threads(threads: int) -> None:
    """intra-op = ``threads``, inter-op = 1 (a CNN is a chain of ops); warns when TF already runs with others."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            log.warning("TensorFlow already started with %s intra-op threads (0 = all cores), not the %s asked "
                        "for; create the KerasPredictor before any other TensorFlow work in this process",
                        current, threads)
