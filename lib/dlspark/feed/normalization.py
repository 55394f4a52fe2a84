"""Per-channel normalisation statistics measured on the train split (recorded in the preprocessing spec)."""
from __future__ import annotations

from typing import Sequence

from dlspark.feed.decode import image_stats
from dlspark.feed.spec import FeedSpec


def image_normalization(files: Sequence[str], image_shape: Sequence[int], *,
                        max_rows: int = 20000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel of ``pixels / 255`` over the first ``max_rows`` images of ``files``."""
    from dlspark.feed.arrow_feeder import read_images_sample

    spec = FeedSpec(kind="image", files=tuple(files), image_shape=tuple(image_shape), shuffle=False)  # type: ignore[arg-type]
    return image_stats(read_images_sample(spec, max_rows))
