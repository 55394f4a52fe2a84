"""PyTorch models and ``build_model``, which rebuilds any of them from its JSON-able spec.

A spec is a plain dict with ``name`` (``cnn`` | ``resnet`` | ``vit`` | ``minilm`` | ``textcnn``) and the model's config fields;
every model exposes it as ``model.spec()`` -> ``model_spec(model)``, so inference and MLflow logging can
rebuild the network and load a saved ``state_dict`` into it.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from dlspark.models.cnn import CNNConfig, CompactCNN
from dlspark.models.resnet import ResNetClassifier, ResNetSpec
from dlspark.models.sentiment import SentimentClassifier, SentimentSpec
from dlspark.models.textcnn import TextCNN, TextCNNSpec
from dlspark.models.vit import ViTClassifier, ViTSpec

__all__ = ["build_model", "model_spec", "CNNConfig", "CompactCNN", "ResNetSpec", "ResNetClassifier",
           "SentimentSpec", "SentimentClassifier", "TextCNNSpec", "TextCNN", "ViTSpec", "ViTClassifier"]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build the model described by ``spec`` (see ``model_spec``), randomly initialised or pretrained encoder.

    Raises
    ------
    ValueError
        If ``spec['name']`` is not a known model or a field is not accepted by that model's config.
    """
    fields = {k: v for k, v in spec.items() if k != "name"}
    name = spec.get("name")
    try:
        if name == "cnn":
            return CompactCNN(CNNConfig(**{**fields, "widths": tuple(fields.get("widths", CNNConfig.widths))}))
        if name == "resnet":
            return ResNetClassifier(ResNetSpec(**fields))
        if name == "minilm":
            return SentimentClassifier(SentimentSpec(**fields))
        if name == "textcnn":
            return TextCNN(TextCNNSpec(**fields))
        if name == "vit":
            return ViTClassifier(ViTSpec(**fields))
    except TypeError as err:
        raise ValueError(f"model spec {spec}: {err}") from err
    raise ValueError(f"model spec name {name!r} is unknown; use one of 'cnn', 'resnet', 'vit', 'minilm', 'textcnn'")


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON-able spec that ``build_model`` turns back into an equivalent (untrained) ``model``."""
    inner = getattr(model, "module", model)  # unwrap DDP
    config = getattr(inner, "config", None) or getattr(inner, "spec", None)
    if config is None or not hasattr(config, "spec"):
        raise ValueError(f"{type(inner).__name__} has no dlspark model spec; build it with dlspark.models.build_model")
    return config.spec()
