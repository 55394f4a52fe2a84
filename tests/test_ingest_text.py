"""Text ingest end to end on local[2]: quarantine reasons, bad encodings, idempotent and incremental runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from dlspark.config import load_config
from dlspark.tables import read_table
from pipelines.ingest_text import InputSchemaError, ingest_text
from tests.ansi import ANSI_MODES, ansi_conf
from tests.stacks import no_cached_frames

pytestmark = pytest.mark.connect  # also run over Spark Connect (make test-connect)

CSV = (
    b"sentiment,text\n"
    b"positive,I love this car\n"
    b"negative,\"worst ride, ever\"\n"
    b"positive,I love   this car\n"          # duplicate after whitespace normalisation
    b"neutral,   \n"                         # empty text
    b"positive,caf\xe9 latin-1 byte\n"        # undecodable byte -> replaced and counted
    b"angry,unknown label here\n"            # label outside the configured set
    b",no label at all\n"                    # missing label
    b"negative,@bob see https://x.io now\n"
    b"neutral,this sentence is certainly longer than eight word pieces\n"
    b"positive,too,many,fields\n"             # malformed: more fields than the header
)


def text_cfg(tmp_path: Path, *sets: str):
    return load_config(overrides=[
        f"paths.data_dir={tmp_path}", "ingest_text.input=landing", "ingest_text.label_column=sentiment",
        "ingest_text.labels=[negative,neutral,positive]", "ingest_text.max_length=8", *sets,
    ])


def rows(spark, tmp_path, name="tables/text"):
    return read_table(spark, f"{tmp_path}/{name}", fmt="parquet").df


@pytest.fixture(scope="module", params=ANSI_MODES)
def first_run(spark, tmp_path_factory, request):
    """One ingest of CSV per ANSI mode (Spark 4's default on, 3.5's off), shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("text")
    (tmp / "landing").mkdir()
    (tmp / "landing/a.csv").write_bytes(CSV)
    with ansi_conf(spark, request.param):
        return tmp, ingest_text(spark, text_cfg(tmp), "run-1")


def test_counts_reconcile_and_reasons(spark, first_run):
    tmp, report = first_run
    c = report.counts
    assert c.seen == c.written + c.duplicates + c.quarantined
    assert (c.written, c.duplicates) == (5, 1)
    reasons = {r["reason"] for r in rows(spark, tmp, "tables/text_quarantine").collect()}
    assert reasons == {"empty_text", "unknown_label", "missing_label", "malformed_record"}
    assert c.quarantined == 4


def test_quarantine_keeps_raw_text_and_detail(spark, first_run):
    tmp, _ = first_run
    q = {r["reason"]: r for r in rows(spark, tmp, "tables/text_quarantine").collect()}
    assert q["unknown_label"]["raw"] == "unknown label here"
    assert "angry" in q["unknown_label"]["detail"] and "negative" in q["unknown_label"]["detail"]


def test_written_rows_are_tokenized_labelled_and_split(spark, first_run):
    tmp, report = first_run
    out = {r["text"]: r for r in rows(spark, tmp).collect()}
    mention = out["@bob see https://x.io now"]
    assert mention["text_norm"] == "@user see http now"
    assert len(mention["input_ids"]) == 8 and mention["input_ids"][0] == 101
    assert mention["label"] == "negative" and mention["label_index"] == 0
    assert {r["split"] for r in out.values()} <= {"train", "val", "test"}
    assert report.summary["labels"] == {"negative": 0, "neutral": 1, "positive": 2}
    stored = json.loads((tmp / "tables/text/_dlspark/labels.json").read_text())
    assert stored["labels"] == report.summary["labels"]


def test_bad_encoding_is_replaced_and_counted(spark, first_run):
    tmp, report = first_run
    replaced = rows(spark, tmp).where(F.col("encoding_replaced")).collect()
    assert len(replaced) == 1 and "\ufffd" in replaced[0]["text"]
    assert report.summary["metrics"]["encoding_replaced"] == 1


def test_overlong_text_is_truncated_and_flagged(spark, first_run):
    tmp, _ = first_run
    flagged = rows(spark, tmp).where(F.col("truncated")).select("text", "num_tokens").collect()
    assert flagged and all(r["num_tokens"] > 8 for r in flagged)
    short = rows(spark, tmp).where(~F.col("truncated")).select("num_tokens").collect()
    assert all(r["num_tokens"] <= 8 for r in short)


def test_rerun_then_incremental(spark, tmp_path):
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing/a.csv").write_bytes(CSV)
    cfg = text_cfg(tmp_path)
    first = ingest_text(spark, cfg, "run-1").counts
    again = ingest_text(spark, cfg, "run-2").counts
    assert (again.files_new, again.seen) == (0, 0)
    (tmp_path / "landing/b.csv").write_bytes(b"sentiment,text\npositive,a brand new text\nnegative,\"worst  ride,  ever\"\n")
    inc = ingest_text(spark, cfg, "run-3").counts
    assert (inc.files_already_ingested, inc.files_new, inc.seen) == (1, 1, 2)
    assert (inc.written, inc.duplicates) == (1, 1)  # the second row's text is already in the table
    assert rows(spark, tmp_path).count() == first.written + 1


def test_jsonl_input_with_a_malformed_line(spark, ansi_mode, tmp_path):
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing/x.jsonl").write_text('{"text": "fine", "label": "positive"}\n{not json\n{"text": "ok too", "label": "negative"}\n')
    cfg = text_cfg(tmp_path, "ingest_text.input_format=jsonl", "ingest_text.label_column=label")
    c = ingest_text(spark, cfg, "run-1").counts
    assert (c.seen, c.written, c.quarantined) == (3, 2, 1)
    q = rows(spark, tmp_path, "tables/text_quarantine").first()
    assert q["reason"] == "malformed_record" and q["raw"] == "{not json"


def test_missing_text_column_names_the_key_and_the_columns(spark, tmp_path):
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing/a.csv").write_text("sentiment,body\npositive,hi\n")
    with pytest.raises(InputSchemaError, match=r"ingest_text.text_column='text'.*\['sentiment', 'body'\]"):
        ingest_text(spark, text_cfg(tmp_path), "run-1")
    assert no_cached_frames(spark)  # the failed run released its file listing
