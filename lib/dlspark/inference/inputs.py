"""Arrow batch -> model inputs for the rows that can be scored, and an error for each row that cannot.

Pure code (pyarrow + numpy). A bad row (null image, wrong byte count or shape, null or empty tokens,
empty text) never fails the batch: it gets an error string ``<reason>: <detail>`` and no prediction.
Whole-column operations only; the common all-good batch is a zero-copy view of Arrow's buffers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlspark.config import TextIngestConfig
from dlspark.feed.decode import pixels_array
from dlspark.text.normalize import NormalizeSpec, normalize_text

TEXT_MODES = ("tokens", "text")


class InputSchemaError(ValueError):
    """The input lacks the columns the model's preprocessing spec reads; the message names them."""


@dataclass
class ModelInputs:
    """Rows ``valid`` (indices into the batch) with their arrays; ``errors[i]`` is None for valid rows."""

    valid: np.ndarray                       # int64 indices of scorable rows
    arrays: dict[str, np.ndarray]           # pixels [v,H,W,C] uint8 | input_ids, attention_mask [v,L]
    errors: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class TextPreprocessing:
    """How raw text becomes token ids: the tokenizer, length and normalisation that ingest used."""

    tokenizer: str
    max_length: int
    normalize: NormalizeSpec

    @classmethod
    def from_spec(cls, pre: Mapping[str, Any], fallback: Mapping[str, Any] | None = None) -> "TextPreprocessing":
        """From a model's preprocessing spec (``text`` block), else ``fallback`` (an ``ingest_text`` config dict)."""
        block = dict(pre.get("text") or {})
        source = block or dict(fallback or {})
        if not source.get("tokenizer"):
            raise InputSchemaError("the model's preprocessing.json names no tokenizer and no ingest_text config was "
                                   "given: score the tokenized table (input_ids) instead of raw text, or retrain")
        norm_fields = NormalizeSpec.__dataclass_fields__
        norm = source.get("normalize") or {k: v for k, v in source.items() if k in norm_fields}
        return cls(tokenizer=str(source["tokenizer"]), max_length=int(pre.get("max_length") or source["max_length"]),
                   normalize=NormalizeSpec(**{k: v for k, v in norm.items() if k in norm_fields}))


def ingest_text_fallback(t: TextIngestConfig) -> dict[str, Any]:
    """The ``ingest_text`` settings as :meth:`TextPreprocessing.from_spec` takes them (for models that do not record them)."""
    return {"tokenizer": t.tokenizer, "max_length": t.max_length, "lowercase": t.lowercase, "mask_urls": t.mask_urls,
            "mask_mentions": t.mask_mentions, "url_token": t.url_token, "mention_token": t.mention_token}


def image_inputs(batch: pa.RecordBatch | pa.Table, image_shape: Sequence[int], column: str = "pixels") -> ModelInputs:
    """Rows of ``column`` holding exactly ``H*W*C`` bytes (and, when present, a matching ``shape``)."""
    _require_columns(batch, [column], "image")
    shape = tuple(int(s) for s in image_shape)
    size = int(np.prod(shape))
    col = _single_chunk(batch.column(column))
    n = len(col)
    errors: list[str | None] = [None] * n
    lengths = pc.binary_length(col).to_numpy(zero_copy_only=False)
    null = ~col.is_valid().to_numpy(zero_copy_only=False)
    wrong_size = ~null & (np.nan_to_num(lengths, nan=-1) != size)
    wrong_shape = _shape_mismatch(batch, shape) & ~null & ~wrong_size
    for i in np.flatnonzero(null):
        errors[i] = "null_image: no pixels"
    for i in np.flatnonzero(wrong_size):
        errors[i] = f"wrong_shape: {int(lengths[i])} bytes, the model takes {'x'.join(map(str, shape))} = {size}"
    for i in np.flatnonzero(wrong_shape):
        errors[i] = f"wrong_shape: shape {batch.column('shape')[int(i)].as_py()}, the model takes {list(shape)}"
    good = ~(null | wrong_size | wrong_shape)
    valid = np.flatnonzero(good)
    scorable = col if len(valid) == n else col.filter(pa.array(good))   # all good: a view, no filter copy
    pixels = pixels_array(scorable, shape, column) if len(valid) else np.zeros((0, *shape), np.uint8)
    return ModelInputs(valid, {"pixels": pixels}, errors)


def token_inputs(batch: pa.RecordBatch | pa.Table, max_length: int | None = None) -> ModelInputs:
    """Rows with non-null ``input_ids``/``attention_mask`` of equal length and at least one attended token."""
    _require_columns(batch, ["input_ids", "attention_mask"], "tokenized text")
    ids_col, mask_col = _single_chunk(batch.column("input_ids")), _single_chunk(batch.column("attention_mask"))
    n = len(ids_col)
    ids_len = pc.list_value_length(ids_col).to_numpy(zero_copy_only=False)
    mask_len = pc.list_value_length(mask_col).to_numpy(zero_copy_only=False)
    null = ~(ids_col.is_valid().to_numpy(zero_copy_only=False) & mask_col.is_valid().to_numpy(zero_copy_only=False))
    ids_len, mask_len = np.nan_to_num(ids_len, nan=0).astype(np.int64), np.nan_to_num(mask_len, nan=0).astype(np.int64)
    mismatch = ~null & (ids_len != mask_len)
    too_long = ~null & ~mismatch & (max_length is not None) & (ids_len > (max_length or 0))
    errors: list[str | None] = [None] * n
    for i in np.flatnonzero(null):
        errors[i] = "null_tokens: input_ids or attention_mask is null"
    for i in np.flatnonzero(mismatch):
        errors[i] = f"wrong_shape: {ids_len[i]} input_ids but {mask_len[i]} attention_mask values"
    for i in np.flatnonzero(too_long):
        errors[i] = f"wrong_shape: {ids_len[i]} tokens, the model takes at most {max_length}"
    candidates = np.flatnonzero(~(null | mismatch | too_long))
    ids, mask = _padded(ids_col, candidates, ids_len), _padded(mask_col, candidates, ids_len)
    attended = mask.sum(axis=1) > 0 if len(candidates) else np.zeros(0, bool)
    for i in candidates[~attended]:
        errors[i] = "empty_text: no attended tokens"
    return ModelInputs(candidates[attended], {"input_ids": ids[attended], "attention_mask": mask[attended]}, errors)


def text_inputs(batch: pa.RecordBatch | pa.Table, pre: TextPreprocessing, tokenizer: Any, column: str = "text") -> ModelInputs:
    """Normalise and tokenize ``column`` as ingest did; null, empty and whitespace-only texts are errors."""
    from dlspark.text.tokenize import tokenize_batch

    _require_columns(batch, [column], "raw text")
    raw = batch.column(column).to_pylist()
    norm = [normalize_text(t, pre.normalize) if isinstance(t, str) else None for t in raw]
    errors: list[str | None] = [None if t else ("empty_text: null" if r is None else "empty_text: nothing left after "
                                                "normalisation") for t, r in zip(norm, raw)]
    valid = np.array([i for i, e in enumerate(errors) if e is None], np.int64)
    tokens = tokenize_batch(tokenizer, [norm[i] for i in valid], pre.max_length)  # type: ignore[misc]
    return ModelInputs(valid, {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}, errors)


def _shape_mismatch(batch: pa.RecordBatch | pa.Table, shape: tuple[int, ...]) -> np.ndarray:
    """Rows whose ``shape`` column (when the input has one) is not ``shape``."""
    n = batch.num_rows
    if "shape" not in batch.schema.names:
        return np.zeros(n, bool)
    col = _single_chunk(batch.column("shape"))
    lengths = np.nan_to_num(pc.list_value_length(col).to_numpy(zero_copy_only=False), nan=0).astype(np.int64)
    bad = lengths != len(shape)
    ok = np.flatnonzero(~bad)
    if len(ok):
        flat = pc.list_flatten(col.filter(pa.array(~bad))).to_numpy(zero_copy_only=False).reshape(-1, len(shape))
        bad[ok] = ~(flat == np.asarray(shape)).all(axis=1)
    return bad


def _padded(col: pa.Array, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``rows`` of a list column as an ``[len(rows), max length]`` int64 array, zero-padded on the right."""
    if len(rows) == 0:
        return np.zeros((0, 1), np.int64)
    picked = col.take(pa.array(rows)) if len(rows) != len(col) else col
    flat = pc.list_flatten(picked).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    widths = lengths[rows]
    width = int(widths.max())
    if widths.min() == width:
        return flat.reshape(len(rows), width)
    out = np.zeros((len(rows), width), np.int64)
    out[np.arange(width)[None, :] < widths[:, None]] = flat
    return out


def _single_chunk(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _require_columns(batch: pa.RecordBatch | pa.Table, names: list[str], what: str) -> None:
    missing = [c for c in names if c not in batch.schema.names]
    if missing:
        raise InputSchemaError(f"scoring {what} needs column(s) {missing}; the input has {batch.schema.names}. "
                               "Point inference.input at an ingest output table, or set inference.text_column")
