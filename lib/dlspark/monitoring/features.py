"""Per-row input statistics computed on executors (inside ``pandas_udf``): image brightness/contrast and
the unknown-token rate of raw text. Pure code: numpy/pandas, no Spark import.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import pandas as pd

IMAGE_STATS = ("brightness", "contrast")


def image_stats(pixels: pd.Series) -> pd.DataFrame:
    """Mean (brightness) and standard deviation (contrast) of each image's uint8 pixel bytes, in [0, 255].

    Parameters
    ----------
    pixels
        Raw ``pixels`` bytes per row (any shape, uint8); null or empty rows give NaN.

    Returns
    -------
    pandas.DataFrame
        Columns ``brightness`` and ``contrast`` (float64), one row per input row.
    """
    out = np.full((len(pixels), 2), np.nan)
    for i, raw in enumerate(pixels):
        if raw is None or len(raw) == 0:
            continue
        arr = np.frombuffer(raw, dtype=np.uint8)
        out[i] = (arr.mean(), arr.std())
    return pd.DataFrame(out, columns=list(IMAGE_STATS))


def unknown_rate_fn(tokenizer: str, max_length: int) -> Callable[[pd.Series], pd.Series]:
    """A ``pd.Series[str] -> pd.Series[float]`` giving each text's share of unknown tokens under ``tokenizer``.

    The tokenizer is loaded once per Python worker. Null texts and texts with no tokens give NaN.
    """
    def rate(texts: pd.Series) -> pd.Series:
        from dlspark.text.tokenize import tokenize_batch

        values = np.full(len(texts), np.nan)
        keep = texts.notna().to_numpy()
        if keep.any():
            batch = tokenize_batch(_tokenizer(tokenizer), texts[keep].astype(str).tolist(), max_length)
            tokens = batch.attention_mask.sum(axis=1)
            values[keep] = np.where(tokens > 0, batch.unknown_tokens / np.maximum(tokens, 1), np.nan)
        return pd.Series(values)

    return rate


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str) -> Any:
    from dlspark.text.tokenize import load_tokenizer

    return load_tokenizer(name)
