"""Small registered models for inference tests: a tiny CNN for 8x8x1 images and the MiniLM sentiment classifier.

Both are logged exactly as ``jobs/train.py`` logs them (pytorch flavor, ``extras/`` labels, preprocessing and
model spec) and registered with alias ``champion`` in an embedded MLflow store under ``data_dir``.
The CNN's weights are fixed by a seed, so tests compare against the same module scored directly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlspark.config import MlflowConfig
from dlspark.models import build_model
from dlspark.models.servable import servable
from dlspark.tracking import TrackingTarget, log_torch_model, register_and_promote, resolve_tracking, start_run

IMAGE_SHAPE = (8, 8, 1)
IMAGE_LABELS = ("circle", "square", "triangle")
TEXT_LABELS = ("negative", "positive")


def image_model() -> torch.nn.Module:
    """The tiny CNN (seeded), in eval mode."""
    torch.manual_seed(0)
    return build_model({"name": "cnn", "in_channels": 1, "num_classes": len(IMAGE_LABELS), "widths": [4, 8]}).eval()


def image_preprocessing() -> dict:
    return {"kind": "image", "label_map": None, "input_column": "pixels", "image_shape": list(IMAGE_SHAPE),
            "dtype": "uint8", "layout": "NCHW", "scale": 1 / 255, "mean": [0.5], "std": [0.25],
            "label_column": "label_index"}


def text_preprocessing(max_length: int = 16) -> dict:
    return {"kind": "text", "label_map": {"negative": 0, "positive": 1}, "input_columns": ["input_ids", "attention_mask"],
            "max_length": max_length, "dtype": "int64", "label_column": "label",
            "text": {"tokenizer": "minilm", "normalize": {"lowercase": False, "mask_urls": True, "mask_mentions": True,
                                                         "url_token": "http", "mention_token": "@user"}}}


def register_image_model(data_dir: Path, name: str = "test-images", labels: tuple[str, ...] = IMAGE_LABELS) -> TrackingTarget:
    """Log + register the tiny CNN as ``name`` (champion if the first version) in the store under ``data_dir``.

    ``labels`` names its classes: a permutation of :data:`IMAGE_LABELS` gives a model with the same weights whose
    every answer is named wrongly (a deliberately worse challenger)."""
    model = image_model()
    example = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    spec = {"name": "cnn", "in_channels": 1, "num_classes": len(IMAGE_LABELS), "widths": [4, 8]}
    return _register(data_dir, name, model, example, labels, image_preprocessing(), spec)


def register_text_model(data_dir: Path, name: str = "test-sentiment", max_length: int = 16) -> TrackingTarget:
    """Log + register the MiniLM classifier (pretrained encoder, seeded head) as ``name`` (champion)."""
    torch.manual_seed(0)
    spec = {"name": "minilm", "encoder": "minilm", "num_classes": 2}
    model = servable(build_model(spec).eval(), "text")
    example = np.stack([np.full((4, max_length), 101), np.ones((4, max_length))], axis=1).astype(np.int64)
    return _register(data_dir, name, model, example, TEXT_LABELS, text_preprocessing(max_length), spec)


def _register(data_dir: Path, name: str, model: torch.nn.Module, example: np.ndarray, labels: tuple[str, ...],
              preprocessing: dict, spec: dict) -> TrackingTarget:
    target = resolve_tracking(MlflowConfig(), str(data_dir))
    with start_run(target, "tests", name) as run:
        import mlflow

        mlflow.log_metric("test_accuracy", 0.5)
        log_torch_model(model, example, {"labels.json": {"labels": list(labels)}, "preprocessing.json": preprocessing,
                                         "model_spec.json": spec})
    register_and_promote(target, name, run.info.run_id, "model", "val_accuracy", 0.5)
    return target
