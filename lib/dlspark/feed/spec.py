"""What a training process needs to read one split: :class:`FeedSpec`. Pure code (no Spark, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

if TYPE_CHECKING:
    from dlspark.config import FeedConfig

Kind = Literal["image", "text"]
FEEDERS = ("arrow", "petastorm")


class FeedError(ValueError):
    """A feed cannot be built or read as specified; the message says what to change."""


@dataclass(frozen=True)
class FeedSpec:
    """Everything a training process needs to read one split of an ingested table; frozen and picklable.

    ``x`` of image batches is ``(pixels / 255 - mean) / std`` per channel (``normalize`` None: mean 0, std 1),
    laid out ``[B, C, H, W]`` (``[B, H, W, C]`` when ``channels_last``). ``label_map`` None: the target is the
    table's ``label_index``; otherwise the target is ``label_map[label]`` and rows whose label is not in the map
    are skipped (and counted). ``shuffle`` False reads in file order (evaluation); ``augment`` applies to images.
    """

    kind: Kind
    files: tuple[str, ...]
    batch_size: int = 128
    shuffle: bool = True
    shuffle_buffer: int = 8192
    prefetch_batches: int = 4
    reader_threads: int = 2
    augment: bool = False
    seed: int = 0
    limit_rows: int | None = None
    drop_last: bool = False
    image_shape: tuple[int, int, int] | None = None
    max_length: int | None = None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    label_map: Mapping[str, int] | None = field(default=None, hash=False)
    feeder: Literal["arrow", "petastorm"] = "arrow"
    channels_last: bool = False
    petastorm_cache_dir: str | None = None  # where the converter materialised ``files`` (petastorm feeder)
    teacher_column: str | None = None      # distillation: a list<float> column of teacher logits -> batch["teacher"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        _check(self.kind in ("image", "text"), f"kind must be 'image' or 'text', got {self.kind!r}")
        _check(self.feeder in FEEDERS, f"feeder must be one of {list(FEEDERS)}, got {self.feeder!r}")
        _check(len(self.files) > 0, "files is empty: the split has no data files; check the table path and split name")
        _check(not (self.teacher_column and self.feeder == "petastorm"),
               "teacher_column (distillation) is read by the arrow feeder only; use feeder='arrow'")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.shuffle_buffer >= 0, f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        _check(self.prefetch_batches >= 1 and self.reader_threads >= 1, "prefetch_batches and reader_threads must be >= 1")
        _check(self.limit_rows is None or self.limit_rows >= 1, f"limit_rows must be >= 1 or None, got {self.limit_rows}")
        if self.kind == "image":
            self._check_image()
        else:
            _check(self.max_length is not None and self.max_length >= 1,
                   f"text feeds need max_length (the table's input_ids length), got {self.max_length!r}")
        if self.label_map is not None:
            _check(len(self.label_map) > 0, "label_map is empty: give {label: target} or None to use label_index")
            object.__setattr__(self, "label_map", {str(k): int(v) for k, v in self.label_map.items()})

    def _check_image(self) -> None:
        shape = self.image_shape
        _check(shape is not None and len(shape) == 3 and all(int(s) >= 1 for s in shape),
               f"image feeds need image_shape (H, W, C) with positive sizes, got {shape!r}; "
               "use the table's shape column, e.g. (28, 28, 1)")
        object.__setattr__(self, "image_shape", tuple(int(s) for s in shape))  # type: ignore[union-attr]
        if self.normalize is not None:
            mean, std = (tuple(float(v) for v in part) for part in self.normalize)
            channels = self.image_shape[2]  # type: ignore[index]
            _check(len(mean) == len(std) == channels,
                   f"normalize needs one mean and one std per channel ({channels}), got mean={mean}, std={std}")
            _check(all(s > 0 for s in std), f"normalize std must be > 0, got {std}")
            object.__setattr__(self, "normalize", (mean, std))

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) applied after scaling pixels to [0, 1]; identity when ``normalize`` is None."""
        if self.normalize is not None:
            return self.normalize
        channels = self.image_shape[2] if self.image_shape else 1
        return (0.0,) * channels, (1.0,) * channels


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise FeedError(message)


def make_spec(feed_cfg: FeedConfig, *, kind: Kind, files: Sequence[str], split: str, seed: int = 0,
              limit_rows: int | None = None, image_shape: Sequence[int] | None = None, max_length: int | None = None,
              normalize: tuple[Sequence[float], Sequence[float]] | None = None,
              label_map: Mapping[str, int] | None = None, **overrides: Any) -> FeedSpec:
    """A :class:`FeedSpec` from ``train.feed``: the train split shuffles and augments, val/test read in order.

    ``overrides`` set any other FeedSpec field (e.g. ``drop_last``, ``channels_last``).
    """
    train = split == "train"
    values: dict[str, Any] = dict(
        kind=kind, files=tuple(files), batch_size=feed_cfg.batch_size, shuffle=train,
        shuffle_buffer=feed_cfg.shuffle_buffer, prefetch_batches=feed_cfg.prefetch_batches,
        reader_threads=feed_cfg.reader_threads, augment=feed_cfg.augment and train and kind == "image",
        seed=seed, limit_rows=limit_rows, image_shape=tuple(image_shape) if image_shape else None,
        max_length=max_length, normalize=normalize, label_map=label_map, feeder=feed_cfg.feeder,
    )
    values.update(overrides)
    return FeedSpec(**values)


def preprocessing_spec(spec: FeedSpec) -> dict[str, Any]:
    """JSON-able description of what the feeder did to rows: logged with the model, reused by inference."""
    out: dict[str, Any] = {"kind": spec.kind, "label_map": dict(spec.label_map) if spec.label_map else None}
    if spec.label_map:
        by_target: dict[int, list[str]] = {}
        for label, target in spec.label_map.items():
            by_target.setdefault(target, []).append(label)
        out["target_labels"] = {str(t): sorted(names) for t, names in sorted(by_target.items())}
    if spec.kind == "image":
        mean, std = spec.mean_std
        out.update(input_column="pixels", image_shape=list(spec.image_shape or ()), dtype="uint8",
                   layout="NHWC" if spec.channels_last else "NCHW", scale=1.0 / 255.0, mean=list(mean), std=list(std),
                   formula="x = (pixels / 255 - mean[c]) / std[c]", label_column="label_index")
    else:
        out.update(input_columns=["input_ids", "attention_mask"], max_length=spec.max_length, dtype="int64",
                   label_column="label" if spec.label_map else "label_index")
    return out
