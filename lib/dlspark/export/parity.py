"""Does an exported model compute what its source computes? Logits compared row by row, on a whole split.

Pure code (numpy, pyarrow; torch only inside the callables it is given). The rows are read straight from the
ingested table's ``split=<name>`` files (Parquet folder or Delta snapshot, see :mod:`dlspark.feed.files`) and
turned into the servable model's input exactly as inference turns them (:mod:`dlspark.inference.inputs` and the
model's ``extras/preprocessing.json``): images -> float32 ``[B, C, H, W]`` normalised with the logged mean/std,
tokens -> int64 ``[B, 2, L]`` (ids, attention mask)::

    data = read_split("/data/tables/images", "parquet", "test", preprocessing)
    report = compare_logits(source_logits, export_logits, min_agreement=0.99, what="ONNX model")
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

log = logging.getLogger(__name__)

Logits = Callable[[np.ndarray], np.ndarray]


class ParityError(ValueError):
    """The exported model's predictions disagree with the source model's on too many rows."""


@dataclass(frozen=True)
class ParityReport:
    """How closely an exported model reproduces its source on some rows."""

    rows: int
    max_abs_diff: float  # largest |logit difference| over the rows
    agreement: float     # fraction of rows whose argmax class is the same


@dataclass(frozen=True)
class SplitSource:
    """Where the parity rows come from: one split of an ingested table (``limit``: the first N rows only)."""

    table_uri: str
    fmt: str = "parquet"
    split: str = "test"
    limit: int | None = None


@dataclass(frozen=True)
class SplitData:
    """A split in the servable model's input form; ``labels[i]`` is -1 where the row's label is not a class."""

    inputs: np.ndarray   # float32 [n, C, H, W] | int64 [n, 2, L]
    labels: np.ndarray   # int64 [n]
    description: str     # e.g. "test split of /data/tables/images (6917 rows)"


def compare_logits(expected: np.ndarray, got: np.ndarray, *, min_agreement: float, what: str) -> ParityReport:
    """Max |logit diff| and argmax agreement of ``got`` against ``expected`` (both ``[n, classes]``).

    Raises
    ------
    ParityError
        When fewer than ``min_agreement`` of the rows get the same class, or the shapes differ.
    """
    if expected.shape != got.shape or expected.ndim != 2 or len(expected) == 0:
        raise ParityError(f"{what} returns logits of shape {got.shape}, the source {expected.shape}; "
                          "both must be [rows, classes] for the same non-empty rows")
    report = ParityReport(len(got), float(np.abs(got - expected).max()),
                          float((got.argmax(axis=1) == expected.argmax(axis=1)).mean()))
    if not report.agreement >= min_agreement:
        raise ParityError(f"{what} predicts the source model's class on only {report.agreement:.1%} of "
                          f"{report.rows} rows (need {min_agreement:.1%}; max |logit diff| {report.max_abs_diff:.3g}); "
                          "the export likely mistraces an op — compare layer outputs, or lower min_agreement if the "
                          "gap is expected (e.g. a quantized model)")
    return report


def batched_logits(fn: Logits, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``fn`` over ``inputs`` in batches; text rows (``[n, 2, L]``) sorted by length, each batch cut to its longest.

    Padding is masked, so cutting changes no result, only the work (as :func:`dlspark.inference.scoring.predict`).
    """
    n = len(inputs)
    if inputs.ndim != 3:
        return np.concatenate([np.asarray(fn(inputs[i:i + batch_size]), np.float32) for i in range(0, n, batch_size)])
    lengths = _token_lengths(inputs)
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    for i in range(0, n, batch_size):
        rows = order[i:i + batch_size]
        width = max(1, int(lengths[rows].max()))
        part = np.asarray(fn(np.ascontiguousarray(inputs[rows, :, :width])), np.float32)
        if out is None:
            out = np.empty((n, part.shape[1]), np.float32)
        out[rows] = part
    assert out is not None, "batched_logits needs at least one row"
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of labelled rows (label >= 0) whose argmax is the label; None when no row is labelled."""
    known = labels >= 0
    return float((logits[known].argmax(axis=1) == labels[known]).mean()) if known.any() else None


def read_split(source: SplitSource, preprocessing: Mapping[str, Any]) -> SplitData:
    """The rows of ``source`` as the model logged with ``preprocessing`` takes them, with their class labels.

    Rows inference would refuse (null or wrong-size images, empty tokens) are dropped, with a warning.

    Raises
    ------
    dlspark.feed.spec.FeedError
        When the table or its split does not exist (the message names what is there).
    """
    import pyarrow.parquet as pq

    from dlspark.feed.files import split_files

    files, _ = split_files(source.table_uri, source.fmt, source.split)
    kind = preprocessing.get("kind")
    columns = (["pixels"] if kind == "image" else ["input_ids", "attention_mask"])
    label_column = preprocessing.get("label_column")
    table = _concat([pq.read_table(f, columns=columns + ([label_column] if label_column else [])) for f in files])
    if source.limit is not None:
        table = table.slice(0, source.limit)
    inputs, valid = _model_inputs(table, preprocessing)
    if len(valid) < table.num_rows:
        log.warning("%d of %d rows of %s split %s cannot be scored (inference refuses them too); parity skips them",
                    table.num_rows - len(valid), table.num_rows, source.table_uri, source.split)
    labels = _labels(table, label_column, preprocessing.get("label_map"))[valid]
    return SplitData(inputs, labels, f"{source.split} split of {source.table_uri} ({len(valid)} rows)")


def _model_inputs(table: Any, pre: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from dlspark.feed.decode import normalize_images
    from dlspark.inference.inputs import image_inputs, token_inputs

    if pre.get("kind") == "image":
        got = image_inputs(table, pre["image_shape"], column=pre.get("input_column", "pixels"))
        x = normalize_images(got.arrays["pixels"], tuple(pre["mean"]), tuple(pre["std"]), channels_last=False)
        return x, got.valid
    if pre.get("kind") == "text":
        got = token_inputs(table)
        stacked = np.stack([got.arrays["input_ids"], got.arrays["attention_mask"]], axis=1).astype(np.int64)
        return stacked, got.valid
    raise ValueError(f"preprocessing.json has kind {pre.get('kind')!r}; parity covers 'image' and 'text' models")


def _labels(table: Any, column: str | None, label_map: Mapping[str, int] | None) -> np.ndarray:
    """int64 class per row: the label column itself, or mapped through ``label_map`` (-1: null or not a class)."""
    n = table.num_rows
    if not column or column not in table.column_names:
        return np.full(n, -1, np.int64)
    values = table.column(column).to_pylist()
    if label_map:
        return np.array([label_map.get(v, -1) if v is not None else -1 for v in values], np.int64)
    return np.array([-1 if v is None else int(v) for v in values], np.int64)


def _concat(tables: list[Any]) -> Any:
    import pyarrow as pa

    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def _token_lengths(stacked: np.ndarray) -> np.ndarray:
    """Per row, one past the last attended position (so a cut keeps every attended token)."""
    mask = stacked[:, 1] != 0
    return np.where(mask.any(axis=1), mask.shape[1] - np.argmax(mask[:, ::-1], axis=1), 0)
