"""Arrow batch -> Arrow batch image decoding, the body of the Spark ``mapInArrow`` stage.

Pure code (pyarrow, no Spark), so it is tested directly. Input rows are Spark ``binaryFile`` rows
(path, modificationTime, length, content); each output row carries either a tensor or a reject reason.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

import pyarrow as pa

from dlspark.config import SplitConfig
from dlspark.images.decode import ImageRejected, ImageSpec, decode_image
from dlspark.splits import split_for_key

# Spark DDL of the rows produced by decode_batches (must match _OUTPUT_TYPES below).
DECODED_DDL = (
    "record_id string, path string, modification_time timestamp, length long, sha256 string, split string, "
    "pixels binary, shape array<int>, width int, height int, format string, original binary, "
    "reject_reason string, reject_detail string"
)


def decode_batches(
    batches: Iterable[pa.RecordBatch], spec: ImageSpec, split: SplitConfig, keep_original: bool
) -> Iterator[pa.RecordBatch]:
    """Decode every image of every batch; never raises for bad image bytes."""
    for batch in batches:
        yield decode_batch(batch, spec, split, keep_original)


def decode_batch(batch: pa.RecordBatch, spec: ImageSpec, split: SplitConfig, keep_original: bool) -> pa.RecordBatch:
    """Decode one batch of ``binaryFile`` rows into tensor rows or rejected rows."""
    cols: dict[str, list] = {name: [] for name in _OUTPUT_NAMES}
    paths = batch.column("path").to_pylist()
    contents = batch.column("content").to_pylist()
    for path, content in zip(paths, contents):
        _append_row(cols, path, content or b"", spec, split, keep_original)
    arrays = {name: pa.array(cols[name], type=tp) for name, tp in _OUTPUT_TYPES if name in cols}
    arrays["modification_time"] = batch.column("modificationTime").cast(pa.timestamp("us", tz="UTC"))
    arrays["length"] = batch.column("length").cast(pa.int64())
    return pa.RecordBatch.from_arrays([arrays[name] for name, _ in _OUTPUT_TYPES], names=[n for n, _ in _OUTPUT_TYPES])


def _append_row(cols: dict[str, list], path: str, content: bytes, spec: ImageSpec, split: SplitConfig, keep: bool) -> None:
    sha = hashlib.sha256(content).hexdigest()
    cols["record_id"].append(path)
    cols["path"].append(path)
    cols["sha256"].append(sha)
    cols["split"].append(split_for_key(sha, split))
    cols["original"].append(content if keep else None)
    try:
        img = decode_image(content, spec)
    except ImageRejected as exc:
        _fill(cols, None, None, None, None, None, exc.reason, exc.detail[:2000])
        return
    _fill(cols, img.pixels, list(img.shape), img.width, img.height, img.format, None, None)


def _fill(cols: dict[str, list], pixels, shape, width, height, fmt, reason, detail) -> None:  # noqa: ANN001
    for name, value in (
        ("pixels", pixels), ("shape", shape), ("width", width), ("height", height), ("format", fmt),
        ("reject_reason", reason), ("reject_detail", detail),
    ):
        cols[name].append(value)


_OUTPUT_TYPES = [
    ("record_id", pa.string()),
    ("path", pa.string()),
    ("modification_time", pa.timestamp("us", tz="UTC")),
    ("length", pa.int64()),
    ("sha256", pa.string()),
    ("split", pa.string()),
    ("pixels", pa.binary()),
    ("shape", pa.list_(pa.int32())),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("original", pa.binary()),
    ("reject_reason", pa.string()),
    ("reject_detail", pa.string()),
]
_OUTPUT_NAMES = [name for name, _ in _OUTPUT_TYPES if name not in ("modification_time", "length")]
