"""Workers write Parquet themselves: the image batch function and the staged writer, without Spark."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlspark.config import SplitConfig
from dlspark.images import ImageSpec
from dlspark.images.batches import OUTCOME_DDL, ImageBatchJob, decode_batch, table_schema
from dlspark.tables import TableSink
from dlspark.tables.staged import STAGED_FILE, StagingArea, drop_records, stage_batches
from tests.image_zoo import jpeg_bytes, png_bytes

LABELS = {"cat": 0, "dog": 1}
NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)


def _job(keep_original: bool = False, labels: dict | None = LABELS) -> ImageBatchJob:
    return ImageBatchJob(ImageSpec((8, 8), "L", "stretch"), SplitConfig(), keep_original, labels, "run-1", NOW)


def _files_batch(rows: list[tuple[str, bytes, str | None]]) -> pa.RecordBatch:
    """Listed files with their bytes, as dlspark.ingest.reading hands them to decode_batch."""
    return pa.RecordBatch.from_pydict({
        "path": [p for p, _, _ in rows],
        "modification_time": pa.array([NOW] * len(rows), type=pa.timestamp("us", tz="Etc/UTC")),
        "length": pa.array([len(c) for _, c, _ in rows], type=pa.int64()),
        "content": pa.array([c for _, c, _ in rows], type=pa.binary()),
        "label": [label for _, _, label in rows],
    })


def _zoo_batch() -> pa.RecordBatch:
    return _files_batch([
        ("file:/in/cat/a.png", png_bytes(20, 10, 100, "L"), "cat"),
        ("file:/in/dog/b.jpg", jpeg_bytes(16, 16), "dog"),
        ("file:/in/dog/bad.jpg", b"not an image at all", "dog"),
        ("file:/in/cow/c.png", png_bytes(8, 8, 50, "L"), "cow"),
        ("file:/in/cat/d.png", png_bytes(9, 9, 70, "L"), "cat"),
    ])


def test_decode_batch_gives_one_outcome_per_file_and_rows_for_the_good_ones():
    rows, outcomes = decode_batch(_zoo_batch(), _job())
    out = outcomes.to_pydict()
    assert out["record_id"] == [f"file:/in/{p}" for p in ("cat/a.png", "dog/b.jpg", "dog/bad.jpg", "cow/c.png", "cat/d.png")]
    assert out["reject_reason"] == [None, None, "not_an_image", "unknown_label", None]
    assert out["label_index"] == [0, 1, 1, None, 0]
    assert [f.name for f in outcomes.schema] == [f.split(" ")[0] for f in OUTCOME_DDL.split(", ")]
    assert rows.column("path").to_pylist() == ["file:/in/cat/a.png", "file:/in/dog/b.jpg", "file:/in/cat/d.png"]
    assert rows.schema.names == [*table_schema(False).names, "split"]
    pixels = np.frombuffer(rows.column("pixels")[0].as_py(), np.uint8)
    assert pixels.shape == (64,) and rows.column("shape")[0].as_py() == [8, 8, 1]
    assert rows.column("width").to_pylist() == [20, 16, 9]
    assert set(rows.column("ingest_run_id").to_pylist()) == {"run-1"}
    assert rows.column("split").to_pylist() == [out["split"][i] for i in (0, 1, 4)]


def test_unlabelled_input_has_no_index_and_no_label_rejections():
    rows, outcomes = decode_batch(_zoo_batch(), _job(labels=None))
    assert outcomes.column("reject_reason").to_pylist() == [None, None, "not_an_image", None, None]
    assert outcomes.column("label_index").to_pylist() == [None] * 5
    assert rows.num_rows == 4


def test_blank_label_is_rejected_as_missing():
    _, outcomes = decode_batch(_files_batch([("file:/x.png", png_bytes(8, 8, 50, "L"), " ")]), _job())
    assert outcomes.column("reject_reason").to_pylist() == ["missing_label"]


def test_keep_original_stores_the_file_bytes():
    batch = _zoo_batch()
    rows, _ = decode_batch(batch, _job(keep_original=True))
    assert rows.column("original")[0].as_py() == batch.column("content")[0].as_py()
    assert "original binary" in _ddl(True) and "original" not in _ddl(False)


def _ddl(keep_original: bool) -> str:
    """The image table's Spark DDL as the sink derives it from the staged files' schema."""
    return TableSink("/tmp/t", fmt="parquet", schema=table_schema(keep_original)).ddl


def test_table_ddl_matches_the_arrow_schema():
    ddl = _ddl(False)
    assert ddl.split(", ")[:5] == ["path string", "label string", "label_index int", "sha256 string", "pixels binary"]
    assert ddl.endswith("split string") and "shape array<int>" in ddl


def _stage(tmp_path, batches, job=None):  # noqa: ANN001
    area = StagingArea(str(tmp_path / "staging"), table_schema(False))
    process = lambda b: decode_batch(b, job or _job())  # noqa: E731
    return area, [o for o in stage_batches(batches, process, area)]


def test_stage_batches_writes_good_rows_per_split_and_names_their_files(tmp_path):
    area, outcomes = _stage(tmp_path, [_zoo_batch(), _zoo_batch()])
    out = pa.Table.from_batches(outcomes).to_pydict()
    for split, staged, reason in zip(out["split"], out[STAGED_FILE], out["reject_reason"]):
        if reason is None:
            assert staged.startswith(str(tmp_path)) and f"/split={split}/" in staged  # a local file: its plain path
        else:
            assert staged is None
    files = sorted({f for f in out[STAGED_FILE] if f})
    tables = [pq.read_table(f.removeprefix("file://")) for f in files]
    assert sum(t.num_rows for t in tables) == 6  # 3 good rows per batch, 2 batches
    assert all(t.schema.names == table_schema(False).names for t in tables)  # split lives in the folder name
    assert all(pq.ParquetFile(f.removeprefix("file://")).metadata.num_row_groups == 2 for f in files)  # one per batch


def test_each_task_attempt_writes_its_own_files(tmp_path):
    _, first = _stage(tmp_path, [_zoo_batch()])
    _, second = _stage(tmp_path, [_zoo_batch()])
    files = lambda outs: {f for o in outs for f in o.column(STAGED_FILE).to_pylist() if f}  # noqa: E731
    assert files(first).isdisjoint(files(second))


def test_a_failing_batch_closes_the_files_and_raises(tmp_path):
    def broken():  # noqa: ANN202
        yield _zoo_batch()
        raise OSError("disk gone")

    area = StagingArea(str(tmp_path / "staging"), table_schema(False))
    with pytest.raises(OSError, match="disk gone"):
        list(stage_batches(broken(), lambda b: decode_batch(b, _job()), area))
    for path in (tmp_path / "staging").rglob("*.parquet"):
        assert pq.read_metadata(path).num_rows > 0  # closed: a readable footer


def test_drop_records_rewrites_or_deletes_the_file(tmp_path):
    _, outcomes = _stage(tmp_path, [_zoo_batch()])
    out = pa.Table.from_batches(outcomes).to_pydict()
    by_file: dict[str, list[str]] = {}
    for rid, staged in zip(out["record_id"], out[STAGED_FILE]):
        if staged:
            by_file.setdefault(staged, []).append(rid)
    for staged, ids in by_file.items():
        assert drop_records(staged, "path", ids[:1]) == len(ids) - 1
        local = staged.removeprefix("file://")
        if len(ids) == 1:
            assert not (tmp_path / local).exists() and not __import__("os").path.exists(local)
        else:
            assert pq.read_table(local).column("path").to_pylist() == ids[1:]


def test_a_task_starts_a_new_file_once_one_holds_file_bytes(tmp_path):
    """One task may process any amount of data: its files roll over at file_bytes, each record names its own."""
    rows = [(f"file:/in/cat/{i}.png", png_bytes(8, 8, i, "L"), "cat") for i in range(12)]
    area = StagingArea(str(tmp_path / "stage"), table_schema(False), blob_columns=("pixels",), file_bytes=1)
    batches = [_files_batch(rows[i:i + 3]) for i in range(0, 12, 3)]
    out = pa.Table.from_batches(list(stage_batches(batches, lambda b: decode_batch(b, _job()), area))).to_pydict()
    files = sorted(tmp_path.glob("stage/split=*/part-*.parquet"))
    assert len(files) == len(set(out[STAGED_FILE])) >= 4  # at least one file per batch: each exceeds 1 byte
    for rid, staged in zip(out["record_id"], out[STAGED_FILE]):
        assert rid in pq.read_table(staged.removeprefix("file://")).column("path").to_pylist()
