"""The compact image CNN in Keras 3 (TensorFlow backend): the TensorFlow twin of ``dlspark.models.cnn``.

Same shape as the torch CNN: blocks of two 3x3 conv + BatchNorm + ReLU, 2x2 max-pool and dropout, then
global average pooling and a small MLP head. Inputs are NHWC (Keras' layout) float32, normalised as the
feeder's ``preprocessing_spec`` says; outputs are float32 logits even under a mixed-precision policy.
No I/O here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class KerasCNNConfig:
    """Shape of the network; :meth:`spec` is the JSON model spec that :func:`build_keras_model` takes."""

    image_shape: tuple[int, int, int] = (28, 28, 1)  # H, W, C
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    hidden: int = 128
    dropout: float = 0.25

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {self.image_shape}")
        if self.num_classes < 2 or not self.widths:
            raise ValueError(f"need num_classes >= 2 and at least one width, got {self.num_classes}, {self.widths}")
        smallest = min(self.image_shape[:2])
        if smallest < 2 ** len(self.widths):
            raise ValueError(f"{len(self.widths)} pooling blocks need images of at least {2 ** len(self.widths)} pixels "
                             f"a side, got {self.image_shape}; use fewer widths")

    def spec(self) -> dict[str, Any]:
        return {"name": "keras_cnn", **asdict(self), "image_shape": list(self.image_shape), "widths": list(self.widths)}


def config_from_spec(spec: Mapping[str, Any]) -> KerasCNNConfig:
    """:class:`KerasCNNConfig` from a model spec (``name`` must be ``keras_cnn``)."""
    if spec.get("name") != "keras_cnn":
        raise ValueError(f"model spec name {spec.get('name')!r} is not a Keras model; expected 'keras_cnn'")
    fields = {k: v for k, v in spec.items() if k != "name"}
    for key in ("image_shape", "widths"):
        if key in fields:
            fields[key] = tuple(int(v) for v in fields[key])
    return KerasCNNConfig(**fields)


def build_keras_model(spec: Mapping[str, Any] | KerasCNNConfig) -> Any:
    """A ``keras.Model``: (B, H, W, C) float32 -> (B, num_classes) float32 logits."""
    import keras
    from keras import layers

    cfg = spec if isinstance(spec, KerasCNNConfig) else config_from_spec(spec)
    inputs = keras.Input(shape=cfg.image_shape, name="x")
    x = inputs
    for width in cfg.widths:
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)                  # (B, H/2, W/2, width)
        x = layers.SpatialDropout2D(cfg.dropout / 2)(x)
    x = layers.GlobalAveragePooling2D()(x)             # (B, widths[-1])
    x = layers.Dense(cfg.hidden, activation="relu")(x)
    x = layers.Dropout(cfg.dropout)(x)
    x = layers.Dense(cfg.num_classes)(x)               # (B, num_classes)
    logits = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="keras_cnn")
