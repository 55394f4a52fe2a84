"""The feeder's batches as torch tensors, a torch DataLoader, or a tf.data pipeline."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from dlspark.feed.batches import open_batches
from dlspark.feed.stream import WEIGHT

if TYPE_CHECKING:
    from dlspark.feed.spec import FeedSpec


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """The batch's arrays as torch tensors sharing their memory (``torch.from_numpy``: no copy)."""
    import torch

    return {name: torch.from_numpy(value) for name, value in batch.items()}


def torch_dataloader(spec: FeedSpec, rank: int = 0, world_size: int = 1, epoch: int = 0) -> Any:
    """A ``torch.utils.data.DataLoader`` over the epoch's batches (already batched: ``batch_size=None``)."""
    import torch.utils.data

    class _Epoch(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            with open_batches(spec, rank=rank, world_size=world_size, epoch=epoch) as batches:
                for batch in batches:
                    yield to_torch(batch)

    return torch.utils.data.DataLoader(_Epoch(), batch_size=None, num_workers=0)


def tf_dataset(spec: FeedSpec, rank: int = 0, world_size: int = 1, epoch: int = 0, *,
               channels_last: bool = True) -> Any:
    """A ``tf.data.Dataset`` of ``(x, y, sample_weight)`` batches (what ``keras.Model.fit`` takes); images NHWC by
    default (Keras), text ``x`` a dict. ``sample_weight`` is 0 for the rows a rank repeats to even out batch counts,
    1 otherwise (see :func:`dlspark.feed.open_batches`).

    Reading and decoding stay in the feeder's threads; the dataset prefetches one batch more.
    """
    import dataclasses

    import tensorflow as tf

    if spec.kind == "image":
        spec = dataclasses.replace(spec, channels_last=channels_last)
        h, w, c = spec.image_shape  # type: ignore[misc]
        x_sig: Any = tf.TensorSpec([None, h, w, c] if channels_last else [None, c, h, w], tf.float32)
    else:
        ids = tf.TensorSpec([None, spec.max_length], tf.int64)
        x_sig = {"input_ids": ids, "attention_mask": ids}
    signature = (x_sig, tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32))

    def generate() -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        with open_batches(spec, rank=rank, world_size=world_size, epoch=epoch) as batches:
            for batch in batches:
                y = batch.pop("y")
                weight = batch.pop(WEIGHT, None)
                weight = np.ones(len(y), np.float32) if weight is None else weight
                yield (batch["x"] if spec.kind == "image" else batch), y, weight

    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(1)
