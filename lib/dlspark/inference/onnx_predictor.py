"""Batch inference with an ONNX model (MLflow ``onnx`` flavor) on onnxruntime.

The model is what :func:`dlspark.export.onnx.log_onnx_model` logs: float32 ``[B, C, H, W]`` images or
int64 ``[B, 2, L]`` tokens (ids, attention mask) in, logits ``[B, classes]`` out. CPU by default; the CUDA
provider when onnxruntime has one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from dlspark.feed.decode import normalize_images
from dlspark.inference.model import mlmodel_flavors
from dlspark.inference.predictors import check_pixels, softmax

log = logging.getLogger(__name__)

FLAVOR = "onnx"


class OnnxPredictor:
    """Predictor (see ``dlspark.inference.predictors``) over a downloaded MLflow onnx model.

    Parameters
    ----------
    model_dir
        The downloaded model folder, the one holding ``MLmodel``.
    threads
        onnxruntime's intra-op threads (e.g. the task's CPUs); None lets onnxruntime pick.
    """

    def __init__(self, model_dir: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.onnx_path = onnx_file(model_dir)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=providers)
        self.input = self.session.get_inputs()[0]
        if len(self.input.shape) not in (3, 4):
            raise ValueError(f"{self.onnx_path} takes input {self.input.name!r} of shape {self.input.shape}, neither "
                             "[B, C, H, W] images nor [B, 2, L] tokens; export it with dlspark.export.onnx")
        log.info("ONNX model %s on %s", self.onnx_path, self.session.get_providers())

    def predict_images(self, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        """uint8 ``[n, H, W, C]`` -> float32 class probabilities ``[n, classes]``."""
        if len(self.input.shape) != 4:
            raise ValueError(f"{self.onnx_path} is a text model ([B, 2, L] tokens); score token ids with predict_tokens")
        _, c, h, w = self.input.shape  # ints, or names for dynamic axes
        check_pixels(pixels, mean, std, (h, w, c))
        x = normalize_images(pixels, tuple(mean), tuple(std), channels_last=False)  # (n, C, H, W)
        logits = self.session.run(None, {self.input.name: x})[0]
        return softmax(logits)

    def predict_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int ``[n, L]`` ids and mask -> float32 class probabilities ``[n, classes]``."""
        if len(self.input.shape) != 3:
            raise ValueError(f"{self.onnx_path} takes [B, C, H, W] images, not tokens: exports of image models only "
                             "score images (predict_images); export the text model to ONNX to score tokens")
        stacked = np.stack([input_ids, attention_mask], axis=1).astype(np.int64, copy=False)
        return softmax(self.session.run(None, {self.input.name: stacked})[0])


def onnx_file(model_dir: str | Path) -> Path:
    """The ``.onnx`` file of an MLflow onnx model folder (the onnx flavor's ``data`` entry in ``MLmodel``).

    Raises
    ------
    FileNotFoundError
        When the folder has no MLmodel, or the file the onnx flavor names is missing.
    ValueError
        When the model has no onnx flavor.
    """
    flavors = mlmodel_flavors(model_dir)
    if FLAVOR not in flavors:
        raise ValueError(f"{model_dir}/MLmodel has no onnx flavor (it has {sorted(flavors)}); "
                         "load it with the predictor for its flavor (dlspark.inference.predictors.load_predictor)")
    data = flavors[FLAVOR].get("data")
    path = Path(model_dir) / str(data)
    if not data or not path.is_file():
        raise FileNotFoundError(f"{model_dir}: the onnx flavor names model file {data!r}, which does not exist; "
                                "download the whole model folder (mlflow.artifacts.download_artifacts(model_uri))")
    return path
