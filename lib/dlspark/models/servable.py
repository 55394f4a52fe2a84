"""The trained model as it is logged and served: rebuilt from the best checkpoint, with one array input.

MLflow's pytorch flavor (and ``mlflow.pyfunc.spark_udf``) feeds a model one array. Image models take
``x`` float32 ``[B, C, H, W]`` as they are; the sentiment model takes ``input_ids`` and ``attention_mask``,
so it is logged inside :class:`StackedTextInput`, whose single input is int64 ``[B, 2, L]``
(``[:, 0]`` token ids, ``[:, 1]`` attention mask).
"""
from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from dlspark.models import build_model


class StackedTextInput(nn.Module):
    """Wraps a ``(input_ids, attention_mask) -> logits`` model as ``stacked [B, 2, L] -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        if stacked.dim() != 3 or stacked.shape[1] != 2:
            raise ValueError(f"expected int64 [batch, 2, length] (token ids, attention mask), got shape {tuple(stacked.shape)}")
        return self.model(stacked[:, 0].long(), stacked[:, 1].long())


def load_trained_model(model_path: str, spec: Mapping[str, Any]) -> nn.Module:
    """The model of ``spec`` with the weights saved at ``model_path`` (``{"model": state_dict, ...}``), in eval mode."""
    from dlspark.filesystem import open_file

    with open_file(model_path, "rb") as handle:
        state = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    model = build_model(dict(spec))
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.eval()


def servable(model: nn.Module, kind: str) -> nn.Module:
    """The module MLflow logs: the image model itself, the text model behind :class:`StackedTextInput`."""
    return model if kind == "image" else StackedTextInput(model).eval()


def example_input(batch: Mapping[str, np.ndarray], kind: str, rows: int = 4) -> np.ndarray:
    """A few rows of a feeder batch in the servable model's input form."""
    if kind == "image":
        return np.ascontiguousarray(batch["x"][:rows])
    return np.stack([batch["input_ids"][:rows], batch["attention_mask"][:rows]], axis=1).astype(np.int64)
