"""What a training process receives (:class:`TrainJob`) and what rank 0 hands back (:class:`TrainResult`)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from dlspark.config import TrainConfig


@dataclass(frozen=True)
class TrainJob:
    """Everything every training process needs; frozen and picklable (it travels to Spark tasks).

    ``train``/``val``/``test`` are ``dlspark.feed.FeedSpec`` objects; ``checkpoint_dir`` is the resolved
    local path or fsspec URI under which ``<run_name>/`` holds the checkpoints and the best model.
    ``model`` overrides the model spec that :func:`default_model_spec` derives from the config.
    """

    config: TrainConfig
    train: Any
    val: Any
    test: Any | None
    num_classes: int
    labels: tuple[str, ...]
    checkpoint_dir: str
    run_name: str
    model: dict[str, Any] | None = field(default=None, hash=False)
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    init_weights: dict[str, Any] | None = field(default=None, hash=False, repr=False)   # transfer learning's source

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"TrainJob.num_classes must be >= 2, got {self.num_classes}")
        if len(self.labels) != self.num_classes:
            raise ValueError(f"TrainJob.labels has {len(self.labels)} names for {self.num_classes} classes; give one per class")
        if not self.run_name or "/" in self.run_name:
            raise ValueError(f"TrainJob.run_name must be a non-empty name without '/', got {self.run_name!r}")

    @property
    def model_spec(self) -> dict[str, Any]:
        return dict(self.model) if self.model is not None else default_model_spec(self)


def weights_digest(weights: Iterable[tuple[str, Any]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor (torch) or array (numpy, TF), in order: the identity
    of trained weights, so that a rerun of a finished run is recognised and registers nothing new."""
    digest = hashlib.sha256()
    for name, value in weights:
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def default_model_spec(job: TrainJob) -> dict[str, Any]:
    """The model spec for ``job.config.model`` (input channels from the train feed's image shape), with
    ``train.model_options`` on top."""
    cfg = job.config
    if cfg.model == "minilm":
        spec = {"name": "minilm", "encoder": cfg.sentiment.encoder, "num_classes": job.num_classes}
    elif cfg.model == "textcnn":
        spec = {"name": "textcnn", "num_classes": job.num_classes}
    elif cfg.model == "vit":
        h, w, c = (int(v) for v in job.train.image_shape)
        if h != w:
            raise ValueError(f"train.model vit takes square images; the table's are {h}x{w}: resize them at ingest")
        spec = {"name": "vit", "in_channels": c, "image_size": h, "num_classes": job.num_classes}
    elif cfg.model == "resnet":
        spec = {"name": "resnet", "variant": "tiny", "in_channels": int(job.train.image_shape[2]), "num_classes": job.num_classes}
    else:
        spec = {"name": "cnn", "in_channels": int(job.train.image_shape[2]), "num_classes": job.num_classes}
    return {**spec, **cfg.model_options}


@dataclass(frozen=True)
class TrainResult:
    """Rank 0's account of a run. ``history`` has one dict per epoch trained (each epoch exactly once)."""

    history: tuple[dict[str, Any], ...]
    best_epoch: int
    best_metric: float
    monitor: str
    test_metrics: dict[str, float]
    model_path: str
    model_spec: dict[str, Any]
    backend: str
    world_size: int
    resumed_from: str | None = None
    stopped_early: bool = False
    timing: dict[str, float] = field(default_factory=dict)
    weights_digest: str | None = None     # sha256 of the best weights: the same weights register once
