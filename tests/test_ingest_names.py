"""Any file name a filesystem can hold is ingested or quarantined, never a job failure; files that vanish or
change between listing and reading become quarantine rows; counts reconcile. Images and text."""
from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from dlspark.config import load_config
from dlspark.ingest import files as ingest_files
from dlspark.ingest.reading import CHANGED, VANISHED, read_listed, with_contents
from dlspark.ingest.text_inputs import plan_inputs, spark_cannot_open
from dlspark.tables import read_table
from pipelines.ingest_images import ingest_images
from pipelines.ingest_text import ingest_text
from tests.image_zoo import jpeg_bytes

pytestmark = pytest.mark.connect  # also run over Spark Connect (make test-connect)

ODD_NAMES = ["with space", "pct%20literal", "hash#1", "plus+1", "br[1]", "q?mark", "ünïcödé", ".leading_dot",
             "_underscore", "star*", "brace{a,b}", "colon:x", "a" * 196]


def _name_tree(root: Path, suffix: str, content: "callable") -> dict[str, str]:
    """One file per odd name (class folder ``k``) plus a zero-byte file; name -> expected outcome."""
    folder = root / "landing" / "k"
    folder.mkdir(parents=True)
    expected = {}
    for i, stem in enumerate(ODD_NAMES):
        (folder / f"{stem}{suffix}").write_bytes(content(i))
        expected[f"{stem}{suffix}"] = "written"
    (folder / f"zero{suffix}").write_bytes(b"")
    expected[f"zero{suffix}"] = "empty_file"
    return expected


def _file_name(record_id: str) -> str:
    """The file name of a record id (a path, or for text ``<path>#<20-digit row id>``)."""
    return re.sub(r"#\d{20}$", "", record_id).rsplit("/", 1)[-1]


def _outcomes(spark, cfg, table: str, quarantine: str, id_col: str) -> dict[str, str]:
    base = cfg.paths.data_dir
    got = {_file_name(r[id_col]): "written" for r in read_table(spark, f"{base}/{table}", fmt="parquet").df.collect()}
    for r in read_table(spark, f"{base}/{quarantine}", fmt="parquet").df.collect():
        got[_file_name(r["record_id"])] = r["reason"]
    return got


def test_image_names_are_ingested_or_quarantined_and_counts_reconcile(spark, tmp_path):
    expected = _name_tree(tmp_path, ".jpg", lambda i: jpeg_bytes(12 + i, 12, seed=i))
    cfg = load_config(overrides=[f"paths.data_dir={tmp_path}", "ingest_images.input=landing", "ingest_images.size=[8,8]"])
    report = ingest_images(spark, cfg, "names-1")
    c = report.counts
    assert (c.files_listed, c.seen, c.written, c.quarantined) == (len(expected), len(expected), len(ODD_NAMES), 1)
    assert _outcomes(spark, cfg, "tables/images", "tables/images_quarantine", "path") == expected
    again = ingest_images(spark, cfg, "names-2").counts  # the ledger matches every odd name on the next run
    assert (again.files_listed, again.files_already_ingested, again.files_new) == (len(expected), len(expected), 0)


def test_text_names_are_ingested_or_quarantined_and_counts_reconcile(spark, tmp_path):
    expected = _name_tree(tmp_path, ".csv", lambda i: f"sentiment,text\npositive,tweet number {i}\n".encode())
    cfg = load_config(overrides=[f"paths.data_dir={tmp_path}", "ingest_text.input=landing", "ingest_text.label_column=sentiment",
                                 "ingest_text.labels=[negative,neutral,positive]"])
    report = ingest_text(spark, cfg, "names-1")
    c = report.counts
    assert (c.files_listed, c.seen, c.written, c.quarantined) == (len(expected), len(expected), len(ODD_NAMES), 1)
    assert _outcomes(spark, cfg, "tables/text", "tables/text_quarantine", "record_id") == expected
    table = read_table(spark, f"{tmp_path}/tables/text", fmt="parquet").df
    texts = {r["source_path"].rsplit("/", 1)[-1]: r["text"] for r in table.collect()}
    assert texts["br[1].csv"] == "tweet number 4" and texts[".leading_dot.csv"] == "tweet number 7"
    assert not list((tmp_path / "tables/text/_dlspark").glob("renamed/*"))  # the safe copies are removed


@pytest.fixture
def racing_listing(monkeypatch):
    """After the listing is written, delete one listed file and rewrite another (a race with the landing zone)."""
    def arm(vanish: Path, change: Path) -> None:
        real = ingest_files.write_listing

        def list_then_race(*args, **kwargs):
            count = real(*args, **kwargs)
            vanish.unlink()
            change.write_bytes(change.read_bytes() + b"\n")
            later = datetime.now().timestamp() + 5
            os.utime(change, (later, later))
            return count
        monkeypatch.setattr(ingest_files, "write_listing", list_then_race)
    return arm


def test_images_that_vanish_or_change_after_listing_are_quarantined(spark, tmp_path, racing_listing):
    folder = tmp_path / "landing" / "k"
    folder.mkdir(parents=True)
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(10, 10, seed=i))
    racing_listing(folder / "0.jpg", folder / "1.jpg")
    cfg = load_config(overrides=[f"paths.data_dir={tmp_path}", "ingest_images.input=landing", "ingest_images.size=[8,8]"])
    c = ingest_images(spark, cfg, "race-1").counts
    assert (c.seen, c.written, c.quarantined) == (4, 2, 2)
    reasons = {r["record_id"].rsplit("/", 1)[-1]: r["reason"]
               for r in read_table(spark, f"{tmp_path}/tables/images_quarantine", fmt="parquet").df.collect()}
    assert reasons == {"0.jpg": VANISHED, "1.jpg": CHANGED}


def test_text_files_that_vanish_or_change_after_listing_are_quarantined(spark, tmp_path, racing_listing):
    folder = tmp_path / "landing"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.csv").write_text(f"sentiment,text\npositive,row {i} a\nnegative,row {i} b\n")
    racing_listing(folder / "0.csv", folder / "1.csv")
    cfg = load_config(overrides=[f"paths.data_dir={tmp_path}", "ingest_text.input=landing", "ingest_text.label_column=sentiment",
                                 "ingest_text.labels=[negative,positive]"])
    c = ingest_text(spark, cfg, "race-1").counts
    assert (c.seen, c.written, c.quarantined) == (4, 2, 2)  # 2 rows of 2.csv; one file-level row each for 0 and 1
    reasons = {r["record_id"].rsplit("/", 1)[-1]: r["reason"]
               for r in read_table(spark, f"{tmp_path}/tables/text_quarantine", fmt="parquet").df.collect()}
    assert reasons == {"0.csv": VANISHED, "1.csv": CHANGED}


# ---- pure parts ------------------------------------------------------------------------------------------

def _listed(path: Path) -> tuple[str, datetime, int]:
    st = path.stat()
    return f"file:{path}", datetime.fromtimestamp(st.st_mtime_ns // 1_000_000 / 1000, timezone.utc), st.st_size


def test_read_listed_returns_bytes_or_the_race_it_lost(tmp_path):
    path = tmp_path / "a b#.bin"
    path.write_bytes(b"12345")
    uri, modified, length = _listed(path)
    assert read_listed(uri, modified, length).content == b"12345"
    assert read_listed(uri, modified - timedelta(seconds=3), length).reason == CHANGED
    assert read_listed(uri, modified, length + 1).reason == CHANGED
    path.unlink()
    got = read_listed(uri, modified, length)
    assert (got.content, got.reason) == (None, VANISHED) and "no longer exists" in got.detail


def test_with_contents_adds_content_and_reasons_in_row_order(tmp_path):
    (tmp_path / "x").write_bytes(b"xx")
    uri, modified, length = _listed(tmp_path / "x")
    batch = pa.RecordBatch.from_pydict({
        "path": [uri, f"file:{tmp_path}/gone"],
        "modification_time": pa.array([modified, modified], pa.timestamp("us", tz="UTC")),
        "length": pa.array([length, 1], pa.int64()), "label": ["a", "b"],
    })
    out = with_contents(batch).to_pydict()
    assert out["content"] == [b"xx", None] and out["read_reason"] == [None, VANISHED] and out["label"] == ["a", "b"]


def test_plan_inputs_copies_names_spark_cannot_open_and_rejects_empty_files(tmp_path):
    for name, data in (("ok.csv", b"a\n1\n"), ("br[1].csv", b"a\n2\n"), ("empty.csv", b"")):
        (tmp_path / name).write_bytes(data)
    listed = [_listed(tmp_path / n) for n in ("ok.csv", "br[1].csv", "empty.csv")]
    plan = plan_inputs(listed, str(tmp_path / "copies"))
    assert plan.paths[0] == f"file:{tmp_path}/ok.csv" and plan.aliases == {plan.paths[1]: f"file:{tmp_path}/br[1].csv"}
    assert Path(plan.paths[1].removeprefix("file:")).read_bytes() == b"a\n2\n" and plan.paths[1].endswith(".csv")
    assert plan.rejected == [(f"file:{tmp_path}/empty.csv", "empty_file", "file has 0 bytes")]
    assert [spark_cannot_open(f"/x/{n}") for n in ("a b.csv", ".h.csv", "_u.csv", "q?.csv", "ü#%+.csv")] == [
        False, True, True, True, False]


def test_listing_glob_follows_hadoop_syntax():
    matches = ingest_files.name_matches
    assert matches("a.jpg", "*.{jpg,png}") and matches("b.png", "*.{jpg,png}") and not matches("c.gif", "*.{jpg,png}")
    assert matches("x1.txt", "x?.txt") and matches("with space.jpg", "*") and matches(".hidden", "*")
