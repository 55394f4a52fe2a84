"""Arrow batch -> Arrow batch text normalisation + tokenization, the body of the Spark ``mapInArrow`` stage.

Pure code (pyarrow, no Spark). Input columns: record_id, source_path, text, label, malformed (the raw
record when the reader could not parse it, else null). Malformed records and empty or whitespace-only
texts are rejected (quarantined later); the rest are normalised, hashed, split and tokenized to fixed
length in one tokenizer call per batch.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from dlspark.config import SplitConfig
from dlspark.splits import split_for_key
from dlspark.text.normalize import NormalizeSpec, has_replacement_chars, normalize_text
from dlspark.text.tokenize import load_tokenizer, tokenize_batch

TOKENIZED_DDL = (
    "record_id string, source_path string, text string, label string, malformed string, text_norm string, sha256 string, "
    "split string, input_ids array<int>, attention_mask array<tinyint>, num_tokens int, unknown_tokens int, "
    "truncated boolean, encoding_replaced boolean, reject_reason string, reject_detail string"
)


@dataclass(frozen=True)
class TokenizeSpec:
    """Everything the per-batch function needs, picklable for executors."""

    tokenizer: str
    max_length: int
    normalize: NormalizeSpec
    split: SplitConfig


def tokenize_batches(batches: Iterable[pa.RecordBatch], spec: TokenizeSpec) -> Iterator[pa.RecordBatch]:
    """Process every batch; the tokenizer is loaded once per Python worker process.

    A Spark task owns one core, so the tokenizer's own Rust thread pool is turned off (it would
    oversubscribe the cores that the other tasks are using).
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = load_tokenizer(spec.tokenizer)
    for batch in batches:
        yield tokenize_record_batch(batch, spec, tok)


def tokenize_record_batch(batch: pa.RecordBatch, spec: TokenizeSpec, tok) -> pa.RecordBatch:  # noqa: ANN001
    """Normalise, validate, hash, split and tokenize one batch."""
    raw = batch.column("text").to_pylist()
    malformed = batch.column("malformed").to_pylist()
    norm = [normalize_text(t, spec.normalize) if t is not None and m is None else None for t, m in zip(raw, malformed)]
    reasons = [_reject_reason(t, m) for t, m in zip(norm, malformed)]
    good = [i for i, r in enumerate(reasons) if r is None]
    tokens = tokenize_batch(tok, [norm[i] for i in good], spec.max_length)
    n, width = len(raw), spec.max_length
    ids = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width), np.int8)
    ids[good], mask[good] = tokens.input_ids, tokens.attention_mask
    hashes = [hashlib.sha256(t.encode()).hexdigest() if r is None else None for t, r in zip(norm, reasons)]
    ok = np.zeros(n, bool)
    ok[good] = True
    columns = {
        "record_id": batch.column("record_id"),
        "source_path": batch.column("source_path"),
        "text": batch.column("text"),
        "label": batch.column("label"),
        "malformed": batch.column("malformed"),
        "text_norm": pa.array(norm, pa.string()),
        "sha256": pa.array(hashes, pa.string()),
        "split": pa.array([split_for_key(h, spec.split) if h else None for h in hashes], pa.string()),
        "input_ids": _list_array(ids, ok, pa.int32()),
        "attention_mask": _list_array(mask, ok, pa.int8()),
        "num_tokens": _scatter(tokens.num_tokens, good, n, pa.int32()),
        "unknown_tokens": _scatter(tokens.unknown_tokens, good, n, pa.int32()),
        "truncated": _scatter(tokens.truncated, good, n, pa.bool_()),
        "encoding_replaced": pa.array([t is not None and has_replacement_chars(t) for t in raw], pa.bool_()),
        "reject_reason": pa.array(reasons, pa.string()),
        "reject_detail": pa.array([_detail(r, t, m) for r, t, m in zip(reasons, raw, malformed)], pa.string()),
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def _reject_reason(text: str | None, malformed: str | None) -> str | None:
    if malformed is not None:
        return "malformed_record"
    if text is None:
        return "missing_text"
    return "empty_text" if not text else None


def _detail(reason: str | None, raw: str | None, malformed: str | None) -> str | None:
    if reason is None:
        return None
    if reason == "malformed_record":
        return f"the reader could not parse this record: {str(malformed)[:500]!r}"
    return "text column is null" if raw is None else f"text is empty after normalisation (raw: {raw[:200]!r})"


def _list_array(values: np.ndarray, valid: np.ndarray, tp: pa.DataType) -> pa.Array:
    """(n, width) matrix -> list array without a Python loop; rows where ``valid`` is False are null."""
    n, width = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    flat = pa.array(values.reshape(-1), type=tp)
    arr = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~valid))
    return arr


def _scatter(values: np.ndarray, index: list[int], n: int, tp: pa.DataType) -> pa.Array:
    out = np.zeros(n, dtype=values.dtype if len(values) else np.int32)
    valid = np.zeros(n, bool)
    if index:
        out[index] = values
        valid[index] = True
    return pa.array(out, type=tp, mask=~valid)
