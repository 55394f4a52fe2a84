"""Dynamic padding: trimming all-padding token columns changes nothing the model computes."""
from __future__ import annotations

import numpy as np
import torch

from dlspark.models.sentiment import mean_pool
from dlspark.train.steps import trim_padding


def test_trim_padding_drops_only_columns_that_are_padding_in_every_row():
    batch = {"input_ids": np.array([[5, 6, 0, 0], [7, 0, 0, 0]]), "attention_mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0]]),
             "y": np.array([0, 1])}
    out = trim_padding(batch)
    assert out["input_ids"].tolist() == [[5, 6], [7, 0]] and out["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert out["y"] is batch["y"]
    full = {"input_ids": np.ones((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64)}
    assert trim_padding(full) is full
    images = {"x": np.zeros((2, 1, 4, 4), np.float32)}
    assert trim_padding(images) is images


def test_masked_mean_pool_is_the_same_on_the_trimmed_batch():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), mean_pool(hidden[:, :2], mask[:, :2]))
