"""TFLite image models: convert a TF SavedModel to ``.tflite`` and run it (LiteRT), batch axis resized per call.

``convert_saved_model`` writes ``fp32`` or ``dynamic_int8`` (int8 weights, float activations) files;
:class:`TFLiteRunner` runs one with ``ai_edge_litert`` when installed, else ``tf.lite.Interpreter``;
:class:`TFLitePyfunc` is the MLflow ``python_function`` wrapper that :mod:`dlspark.export.tflite` logs.
The registry flow (export a registered Keras model, check parity, register) is in ``dlspark.export.tflite``.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

QUANTIZATIONS = ("fp32", "dynamic_int8")
ARTIFACT = "tflite"  # the pyfunc model's artifact key for the .tflite file


class TFLiteError(ValueError):
    """A .tflite file cannot be loaded or run as an image model, or an input does not fit it."""



def convert_saved_model(saved_model_dir: str | Path, path: str | Path, *, quantization: str = "fp32") -> Path:
    """Convert a TF SavedModel (``serving_default`` signature) to a ``.tflite`` file.

    Parameters
    ----------
    saved_model_dir
        E.g. ``<downloaded keras model>/data/model``.
    path
        The ``.tflite`` file to write; its folder is created.
    quantization
        ``fp32`` (plain conversion) or ``dynamic_int8`` (``optimizations=[tf.lite.Optimize.DEFAULT]``:
        weights of large enough tensors stored as int8, dequantized or run in int8 kernels at inference).

    Returns
    -------
    Path
        ``path``, checked to load in the interpreter with one float32 4-D input.
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    if not (Path(saved_model_dir) / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{saved_model_dir} has no saved_model.pb; pass the SavedModel folder "
                                "(<keras model logged by log_keras_model>/data/model)")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())
    TFLiteRunner(path)  # fails now, not at serving time, if the output is not a runnable image model
    return path


def _verify_flatbuffer(path: Path) -> None:
    """Parse the whole model in Python first: the interpreter does not verify the file and crashes the process
    (SIGSEGV) on a truncated one, where this raises ValueError."""
    from tensorflow.lite.python import schema_py_generated as schema

    buf = bytearray(path.read_bytes())
    if len(buf) < 8 or not schema.Model.ModelBufferHasIdentifier(buf, 0):
        raise ValueError("no TFLite file identifier 'TFL3' at bytes 4-8")
    try:
        schema.ModelT.InitFromPackedBuf(buf, 0)
    except Exception as exc:  # noqa: BLE001 - struct.error, IndexError, ... from a cut or corrupted flatbuffer
        raise ValueError(f"the flatbuffer does not parse: {type(exc).__name__}: {exc}") from exc


def _interpreter(path: Path, threads: int | None) -> Any:
    """A LiteRT interpreter for ``path``; tf.lite's deprecated copy when ai_edge_litert is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():  # tf.lite.Interpreter warns it moved to ai_edge_litert; it works in TF 2.21
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated", category=UserWarning)
            return tf.lite.Interpreter(model_path=str(path), num_threads=threads)
    return Interpreter(model_path=str(path), num_threads=threads)


class TFLiteRunner:
    """A ``.tflite`` image model: float32 NHWC ``[B, H, W, C]`` -> float32 logits ``[B, classes]``, any batch size.

    Parameters
    ----------
    path
        The ``.tflite`` file (one float32 4-D input, one output).
    threads
        Interpreter threads (None: LiteRT's default).

    Raises
    ------
    TFLiteError
        When the file is not a TFLite model, or not one with a single float32 ``[B, H, W, C]`` input.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        try:
            _verify_flatbuffer(self.path)
            self._interp = _interpreter(self.path, threads)
        except (ValueError, RuntimeError) as exc:
            raise TFLiteError(f"{self.path} is not a loadable TFLite model ({exc}); reconvert it with "
                              "convert_saved_model") from exc
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        shape = [int(s) for s in inputs[0]["shape_signature"]] if inputs else []
        if len(inputs) != 1 or len(outputs) != 1 or len(shape) != 4 or inputs[0]["dtype"] != np.float32:
            raise TFLiteError(f"{self.path} has inputs {[(d['name'], d['dtype'].__name__, d['shape_signature'].tolist()) for d in inputs]} "
                              f"and {len(outputs)} output(s); an image model has one float32 [B, H, W, C] input "
                              "and one logits output — convert the Keras SavedModel of an image classifier")
        self.image_shape = tuple(shape[1:])  # (H, W, C)
        self._in, self._out = inputs[0]["index"], outputs[0]["index"]
        self._batch = -1
        self._lock = threading.Lock()  # one interpreter: calls from several threads take turns

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for the float32 batch ``x`` (already normalised as the model was trained)."""
        x = check_batch(x, self.image_shape, str(self.path))
        with self._lock:
            if len(x) != self._batch:
                self._interp.resize_tensor_input(self._in, list(x.shape))
                self._interp.allocate_tensors()
                self._batch = len(x)
            self._interp.set_tensor(self._in, x)
            self._interp.invoke()
            return self._interp.get_tensor(self._out)  # a copy


def check_batch(x: Any, image_shape: tuple[int, ...], what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or len(x) == 0 or tuple(x.shape[1:]) != tuple(image_shape):
        raise TFLiteError(f"{what} takes a non-empty float32 NHWC batch [B, {', '.join(map(str, image_shape))}], got "
                          f"{type(x).__name__} {getattr(x, 'shape', '')}; normalise images as extras/preprocessing.json "
                          "says and lay them out channels-last")
    return np.ascontiguousarray(x, dtype=np.float32)


class TFLitePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow ``python_function`` wrapper of a ``.tflite`` image model (artifact ``tflite``): NHWC float32 -> logits."""

    def load_context(self, context: Any) -> None:
        self._runner = TFLiteRunner(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as an input schema
        """float32 NHWC batch (array-like) -> logits ``[B, classes]``."""
        return self._runner(np.asarray(model_input, dtype=np.float32))
