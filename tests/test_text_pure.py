"""Normalisation, tokenization and the text batch function (pure: no Spark)."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from dlspark.config import SplitConfig
from dlspark.text.batches import OUTCOME_DDL, TABLE_SCHEMA, TextBatchJob, TokenizeSpec, tokenize_record_batch, tokenize_table_batch
from dlspark.text.normalize import NormalizeSpec, has_replacement_chars, normalize_text
from dlspark.text.tokenize import TokenizerNotFound, load_tokenizer, tokenize_batch, tokenizer_dir


def test_normalize_masks_urls_mentions_and_whitespace():
    spec = NormalizeSpec()
    assert normalize_text("  Hi @bob,\tsee https://t.co/x1 \n now ", spec) == "Hi @user, see http now"
    assert normalize_text("mail me at a@b.com", spec) == "mail me at a@b.com"  # not a mention


def test_normalize_nfc_and_lowercase():
    decomposed = "Cafe\u0301"
    out = normalize_text(decomposed, NormalizeSpec(lowercase=True, mask_urls=False))
    assert out == "caf\u00e9"


def test_replacement_chars_detected():
    assert has_replacement_chars(b"bad \xff byte".decode("utf-8", errors="replace"))
    assert not has_replacement_chars("fine")


def test_packaged_tokenizer_loads_without_transformers_and_matches_it():
    """The Rust tokenizer read from tokenizer.json gives transformers' ids, truncation and padding."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    assert (tokenizer_dir("minilm") / "tokenizer.json").is_file()
    probe = "import sys; from dlspark.text.tokenize import load_tokenizer; load_tokenizer('minilm'); print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
    texts = ["Hello @user, see http now!", "caf\u00e9 na\u00efve \U0001F600", "UPPER lower", "word " * 80, "\u4e2d\u6587 text", ""]
    ref = AutoTokenizer.from_pretrained(str(tokenizer_dir("minilm")), local_files_only=True)
    want = ref(texts, truncation=True, max_length=16, padding="max_length")
    got = tokenize_batch(load_tokenizer("minilm"), texts, 16)
    assert got.input_ids.tolist() == want["input_ids"] and got.attention_mask.tolist() == want["attention_mask"]


def test_directory_without_tokenizer_json_is_built_by_transformers(tmp_path):
    import shutil

    shutil.copy(tokenizer_dir("minilm") / "vocab.txt", tmp_path / "vocab.txt")
    shutil.copy(tokenizer_dir("minilm") / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token == "[PAD]" and tok.unk_id == 100
    assert tokenize_batch(tok, ["hello world"], 6).input_ids.tolist() == [[101, 7592, 2088, 102, 0, 0]]


def test_unknown_tokenizer_says_what_is_accepted(tmp_path):
    with pytest.raises(TokenizerNotFound, match="packaged alias"):
        tokenizer_dir(str(tmp_path))


def test_tokenize_batch_pads_truncates_and_counts():
    tok = load_tokenizer("minilm")
    out = tokenize_batch(tok, ["hello world", "word " * 50], max_length=16)
    assert out.input_ids.shape == (2, 16) and out.input_ids.dtype == np.int32
    assert out.attention_mask[0].tolist() == [1, 1, 1, 1] + [0] * 12
    assert out.truncated.tolist() == [False, True]
    assert out.num_tokens.tolist() == [4, 52]  # [CLS] + 50 words + [SEP]


def _batch(texts, labels=None, malformed=None):
    n = len(texts)
    return pa.RecordBatch.from_pydict({
        "record_id": [f"r{i}" for i in range(n)], "source_path": ["f.csv"] * n, "text": texts,
        "label": labels or ["positive"] * n, "malformed": malformed or [None] * n,
    })


def test_batch_rejects_empty_null_and_malformed_and_keeps_order():
    spec = TokenizeSpec("minilm", 8, NormalizeSpec(), SplitConfig())
    out = tokenize_record_batch(
        _batch(["good text", "   ", None, "x"], malformed=[None, None, None, "x,\"broken"]), spec, load_tokenizer("minilm")
    ).to_pydict()
    assert out["reject_reason"] == [None, "empty_text", "missing_text", "malformed_record"]
    assert out["record_id"] == ["r0", "r1", "r2", "r3"]
    assert out["input_ids"][0][:4] == [101, 2204, 3793, 102] and out["input_ids"][1] is None
    assert out["sha256"][0] is not None and out["sha256"][1] is None
    assert out["split"][0] in {"train", "val", "test"}


def test_batch_same_normalised_text_same_hash():
    spec = TokenizeSpec("minilm", 8, NormalizeSpec(), SplitConfig())
    out = tokenize_record_batch(_batch(["see http://a.b  now", "see   https://c.d now"]), spec, load_tokenizer("minilm")).to_pydict()
    assert out["sha256"][0] == out["sha256"][1]


def test_batch_all_rejected_still_returns_rows():
    spec = TokenizeSpec("minilm", 8, NormalizeSpec(), SplitConfig())
    out = tokenize_record_batch(_batch(["", " "]), spec, load_tokenizer("minilm"))
    assert out.num_rows == 2 and out.column("reject_reason").to_pylist() == ["empty_text", "empty_text"]


def _job(labels=None):
    spec = TokenizeSpec("minilm", 8, NormalizeSpec(), SplitConfig())
    return TextBatchJob(spec, labels, "run-1", datetime(2026, 11, 27, tzinfo=timezone.utc))


def test_table_batch_rejects_unknown_and_missing_labels_and_keeps_raw_only_for_rejects():
    batch = _batch(["fine text", "odd label", "no label", "   "], labels=["positive", "angry", " ", "positive"])
    rows, outcomes = tokenize_table_batch(batch, _job({"negative": 0, "positive": 1}))
    out = outcomes.to_pydict()
    assert [f.name for f in outcomes.schema] == [f.split(" ")[0] for f in OUTCOME_DDL.split(", ")]
    assert out["reject_reason"] == [None, "unknown_label", "missing_label", "empty_text"]
    assert "angry" in out["reject_detail"][1] and "negative, positive" in out["reject_detail"][1]
    assert out["label_index"] == [1, None, None, 1]  # the label is known even where the text is rejected
    assert out["raw_record"] == [None, "odd label", "no label", "   "]
    assert rows.schema.names == [*TABLE_SCHEMA.names, "split"]
    good = rows.to_pydict()
    assert good["record_id"] == ["r0"] and good["label_index"] == [1] and good["ingest_run_id"] == ["run-1"]
    assert good["split"] == [out["split"][0]] and good["input_ids"][0][:4] == [101, 2986, 3793, 102]
    assert rows.cast(pa.schema([*TABLE_SCHEMA, ("split", pa.string())])).num_rows == 1


def test_table_batch_unlabelled_input_writes_every_valid_text():
    rows, outcomes = tokenize_table_batch(_batch(["a", "b"], labels=[None, None]), _job(labels=None))
    assert outcomes.column("reject_reason").to_pylist() == [None, None]
    assert rows.num_rows == 2 and rows.column("label_index").to_pylist() == [None, None]
