"""Arrow batch -> (table rows, outcome rows) text normalisation + tokenization, the body of the Spark
``mapInArrow`` stage.

Pure code (pyarrow, no Spark). Input columns: record_id, source_path, text, label, malformed (the raw
record when the reader could not parse it, else null), and optionally read_reason/read_detail (the record's
file changed between listing and reading: rejected with that reason). Malformed records, empty or whitespace-only texts
and records without a known label are rejected (quarantined later); the rest are normalised, hashed,
split and tokenized to fixed length in one tokenizer call per batch. Every input record gets one outcome
row (``OUTCOME_DDL``); the good ones also become a table row (``table_schema``), written by
:func:`dlspark.tables.staged.stage_batches` without a trip through the JVM.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlspark.config import SplitConfig
from dlspark.labels import label_index
from dlspark.runlog import task_stage
from dlspark.splits import split_for_key
from dlspark.text.normalize import NormalizeSpec, has_replacement_chars, normalize_text
from dlspark.text.tokenize import load_tokenizer, tokenize_batch

_UTC_US = pa.timestamp("us", tz="UTC")
# One row per input record (Spark DDL); ``raw_record`` is kept for rejected records only.
OUTCOME_DDL = (
    "record_id string, source_path string, sha256 string, split string, label string, label_index int, "
    "num_tokens int, truncated boolean, encoding_replaced boolean, reject_reason string, reject_detail string, "
    "raw_record string"
)
_TABLE_TYPES = [
    ("record_id", pa.string()), ("source_path", pa.string()), ("text", pa.string()), ("text_norm", pa.string()),
    ("label", pa.string()), ("label_index", pa.int32()), ("sha256", pa.string()), ("input_ids", pa.list_(pa.int32())),
    ("attention_mask", pa.list_(pa.int8())), ("num_tokens", pa.int32()), ("unknown_tokens", pa.int32()),
    ("truncated", pa.bool_()), ("encoding_replaced", pa.bool_()), ("ingest_run_id", pa.string()),
    ("ingested_at", _UTC_US),
]
TABLE_SCHEMA = pa.schema(_TABLE_TYPES)  # the ``split`` partition column lives in the folder names


@dataclass(frozen=True)
class TokenizeSpec:
    """Everything the per-batch function needs, picklable for executors."""

    tokenizer: str
    max_length: int
    normalize: NormalizeSpec
    split: SplitConfig


def tokenize_record_batch(batch: pa.RecordBatch, spec: TokenizeSpec, tok) -> pa.RecordBatch:  # noqa: ANN001
    """Normalise, validate, hash, split and tokenize one batch."""
    raw = batch.column("text").to_pylist()
    malformed = batch.column("malformed").to_pylist()
    with task_stage("normalize"):
        norm = [normalize_text(t, spec.normalize) if t is not None and m is None else None for t, m in zip(raw, malformed)]
    read = _read_reasons(batch)
    reasons = [rr or _reject_reason(t, m) for (rr, _), t, m in zip(read, norm, malformed)]
    good = [i for i, r in enumerate(reasons) if r is None]
    with task_stage("tokenize"):
        tokens = tokenize_batch(tok, [norm[i] for i in good], spec.max_length)
    n, width = len(raw), spec.max_length
    ids = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width), np.int8)
    ids[good], mask[good] = tokens.input_ids, tokens.attention_mask
    with task_stage("hash"):
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
        "reject_detail": pa.array([rd or _detail(r, t, m) for (_, rd), r, t, m in zip(read, reasons, raw, malformed)],
                                  pa.string()),
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


@dataclass(frozen=True)
class TextBatchJob:
    """What every tokenize task needs: picklable, built once on the driver.

    ``labels`` maps label -> index; None means the input is unlabelled (every label index is null).
    """

    spec: TokenizeSpec
    labels: Mapping[str, int] | None
    run_id: str
    ingested_at: datetime


def tokenize_table_batch(batch: pa.RecordBatch, job: TextBatchJob) -> tuple[pa.Table, pa.RecordBatch]:
    """(table rows of the good records + split, outcome rows of all) for one input batch.

    The tokenizer is loaded once per Python worker process. A Spark task owns one core, so the
    tokenizer's own Rust thread pool is turned off (it would oversubscribe the other tasks' cores).
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    wide = _with_label_index(tokenize_record_batch(batch, job.spec, load_tokenizer(job.spec.tokenizer)), job.labels)
    rejected = pc.is_valid(wide.column("reject_reason"))
    raw = pc.if_else(rejected, pc.coalesce(*[wide.column(c).cast(pa.string()) for c in ("malformed", "text")]), None)
    outcome_names = [f.split(" ")[0] for f in OUTCOME_DDL.split(", ")]
    outcomes = pa.RecordBatch.from_arrays([raw if n == "raw_record" else wide.column(n) for n in outcome_names], names=outcome_names)
    good = pa.Table.from_batches([wide]).filter(pc.invert(rejected))
    n = good.num_rows
    extra = {"ingest_run_id": pa.array([job.run_id] * n, pa.string()), "ingested_at": pa.array([job.ingested_at] * n, _UTC_US)}
    names = [*TABLE_SCHEMA.names, "split"]
    return pa.table({name: extra[name] if name in extra else good.column(name) for name in names}), outcomes


def _with_label_index(wide: pa.RecordBatch, labels: Mapping[str, int] | None) -> pa.RecordBatch:
    """Add ``label_index``; a record not yet rejected whose label is blank or unknown is rejected here."""
    reasons, details = wide.column("reject_reason").to_pylist(), wide.column("reject_detail").to_pylist()
    indices = []
    for i, label in enumerate(wide.column("label").to_pylist()):
        index, reason, detail = label_index(label, labels)
        indices.append(index)
        if reasons[i] is None and reason is not None:
            reasons[i], details[i] = reason, detail
    columns = {name: wide.column(name) for name in wide.schema.names}
    columns.update(label_index=pa.array(indices, pa.int32()), reject_reason=pa.array(reasons, pa.string()),
                   reject_detail=pa.array(details, pa.string()))
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def _read_reasons(batch: pa.RecordBatch) -> list[tuple[str | None, str | None]]:
    """(reason, detail) per record from the optional ``read_reason``/``read_detail`` columns (a changed file)."""
    if "read_reason" not in batch.schema.names:
        return [(None, None)] * batch.num_rows
    return list(zip(batch.column("read_reason").to_pylist(), batch.column("read_detail").to_pylist()))


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
