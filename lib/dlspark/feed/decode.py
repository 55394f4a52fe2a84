"""Arrow columns -> numpy arrays (zero-copy where Arrow allows), targets, augmentation, normalisation.

Pure code (pyarrow + numpy). Every function works on whole columns or batches: no per-row Python.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlspark.feed.spec import FeedError

if TYPE_CHECKING:
    from dlspark.feed.spec import FeedSpec

Chunk = dict[str, np.ndarray]  # rows of one read: pixels (n,H,W,C) uint8 | input_ids, attention_mask (n,L); y (n,)


def columns_for(kind: str, label_map: bool) -> list[str]:
    """The table columns a ``kind`` feed reads (``label`` when mapping labels, else ``label_index``)."""
    return (["pixels", "shape"] if kind == "image" else ["input_ids", "attention_mask"]) + \
        (["label"] if label_map else ["label_index"])


def read_columns(spec: FeedSpec) -> list[str]:
    """The table columns the feeder reads for ``spec`` (and the teacher's logits, when distilling)."""
    return columns_for(spec.kind, bool(spec.label_map)) + ([spec.teacher_column] if spec.teacher_column else [])


def check_columns(names: list[str], spec: FeedSpec, where: str) -> None:
    """FeedError naming the missing columns of ``where`` (a file) and what the feeder expects."""
    missing = [c for c in read_columns(spec) if c not in names]
    if missing:
        table = "ingest_images" if spec.kind == "image" else "ingest_text"
        raise FeedError(f"{where} has no column(s) {missing} (its columns: {names}); a {spec.kind} feed reads "
                        f"tables written by {table}; point the feed at such a table or fix kind")


def targets(table: pa.Table, spec: FeedSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """``(y int64 for every row, keep mask or None)``: label_index, or label_map[label] with unknowns dropped."""
    if not spec.label_map:
        col = table.column("label_index")
        if col.null_count:
            raise FeedError(f"label_index has {col.null_count} null(s); train on a labelled table (label_source)")
        return col.to_numpy().astype(np.int64), None
    return map_labels(table.column("label"), spec.label_map)


def map_labels(labels: pa.ChunkedArray | pa.Array, label_map: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(label_map[label] or -1, known mask)`` for a string column."""
    keys = list(label_map)
    index = pc.index_in(labels, value_set=pa.array(keys, pa.string()))
    known = index.is_valid().to_numpy(zero_copy_only=False)
    values = np.array([label_map[k] for k in keys], np.int64)
    y = values[pc.fill_null(index, 0).to_numpy(zero_copy_only=False).astype(np.int64)]
    y[~known] = -1
    return y, known


def pixels_array(col: pa.ChunkedArray | pa.Array, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """A binary column of equal-length uint8 tensors -> ``(n, H, W, C)`` uint8, a view on Arrow's buffers."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = [_binary_chunk(chunk, shape, where) for chunk in chunks if len(chunk)]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros((0, *shape), np.uint8)


def _binary_chunk(arr: pa.Array, shape: tuple[int, int, int], where: str) -> np.ndarray:
    if arr.null_count:
        raise FeedError(f"{where}: pixels has {arr.null_count} null(s); re-ingest, quarantined rows have no pixels")
    if pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.binary())
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[arr.offset:arr.offset + len(arr) + 1]
    lengths = np.diff(offsets)
    size = int(np.prod(shape))
    if lengths.min() != size or lengths.max() != size:
        bad = int(lengths[lengths != size][0])
        raise FeedError(f"{where}: a pixels value holds {bad} bytes but image_shape {tuple(shape)} needs {size}; "
                        "set image_shape to the table's shape column (H, W, C)")
    data = np.frombuffer(data_buf, np.uint8)[offsets[0]:offsets[-1]]
    return data.reshape(len(arr), *shape)


def check_shapes(col: pa.ChunkedArray, shape: tuple[int, int, int], where: str) -> None:
    """FeedError unless every row's ``shape`` list equals ``shape``."""
    flat = pc.list_flatten(col).to_numpy()
    if len(flat) != 3 * len(col) or not (flat.reshape(-1, 3) == np.asarray(shape)).all():
        found = col[0].as_py() if len(col) else None
        raise FeedError(f"{where}: the shape column holds {found} but the feed expects image_shape {tuple(shape)}; "
                        "set image_shape to the table's shape (all rows of an ingested table share it)")


def token_array(col: pa.ChunkedArray, length: int, name: str, where: str) -> np.ndarray:
    """A fixed-length list column -> ``(n, length)`` numpy (a view for a single chunk without nulls)."""
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != length or lengths.max() != length):
        bad = int(lengths[lengths != length][0])
        raise FeedError(f"{where}: {name} rows hold {bad} ids but max_length is {length}; "
                        "set max_length to the table's ingest_text.max_length")
    flat = pc.list_flatten(col)
    values = flat.to_numpy() if flat.null_count == 0 else flat.to_numpy(zero_copy_only=False)
    return values.reshape(len(col), length)


def decode_table(table: pa.Table, spec: FeedSpec, where: str) -> Chunk:
    """All rows of ``table`` as numpy arrays (views where possible) with their targets in ``y`` (and the teacher's
    logits in ``teacher`` when ``spec.teacher_column`` is set)."""
    y, _ = targets(table, spec)
    teacher = {"teacher": teacher_logits(table.column(spec.teacher_column), where)} if spec.teacher_column else {}
    if spec.kind == "image":
        shape = spec.image_shape
        check_shapes(table.column("shape"), shape, where)  # type: ignore[arg-type]
        return {"pixels": pixels_array(table.column("pixels"), shape, where), "y": y, **teacher}  # type: ignore[arg-type]
    return {"input_ids": token_array(table.column("input_ids"), spec.max_length, "input_ids", where),  # type: ignore[arg-type]
            "attention_mask": token_array(table.column("attention_mask"), spec.max_length, "attention_mask", where),  # type: ignore[arg-type]
            "y": y, **teacher}


def teacher_logits(col: pa.ChunkedArray, where: str) -> np.ndarray:
    """A list<float> column of equal-length logits -> float32 ``(n, classes)``."""
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if col.null_count or (len(lengths) and lengths.min() != lengths.max()):
        raise FeedError(f"{where}: the teacher's logits are null or of unequal length in some rows; rebuild the "
                        "distillation table (delete train.distill.table and rerun)")
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(col), int(lengths[0]) if len(lengths) else 0)


def augment_images(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and pad-and-crop (zero padding of ``max(1, round(min(H, W) / 8))`` pixels)."""
    n, h, w, _ = pixels.shape
    pad = max(1, round(min(h, w) / 8))
    padded = np.pad(pixels, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    flip = rng.random(n) < 0.5
    oy = rng.integers(0, 2 * pad + 1, n)
    ox = rng.integers(0, 2 * pad + 1, n)
    rows = oy[:, None] + np.arange(h)
    cols = ox[:, None] + np.arange(w)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize_images(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                     channels_last: bool) -> np.ndarray:
    """uint8 ``(n, H, W, C)`` -> float32 ``(pixels / 255 - mean) / std``, ``(n, C, H, W)`` unless channels_last."""
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).astype(np.float32)
    bias = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)
    n, h, w, c = pixels.shape
    if channels_last:
        out = pixels.astype(np.float32)
        out *= scale
        out += bias
        return out
    out = np.empty((n, c, h, w), np.float32)
    for ch in range(c):
        np.multiply(pixels[..., ch], scale[ch], out=out[:, ch], dtype=np.float32)
        out[:, ch] += bias[ch]
    return out


def image_stats(pixels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``pixels / 255`` over a uint8 ``(n, H, W, C)`` sample."""
    if len(pixels) == 0:
        raise FeedError("cannot compute normalisation from zero images; give normalize explicitly")
    flat = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64) / 255.0
    return tuple(flat.mean(axis=0).tolist()), tuple(np.maximum(flat.std(axis=0), 1e-6).tolist())
