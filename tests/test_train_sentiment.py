"""Sentiment transfer learning on a tiny tokenized table: frozen MiniLM encoder, then top layers fine-tuned."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dlspark.config import FeedConfig, SentimentConfig, TrainConfig
from dlspark.feed import make_spec
from dlspark.models import build_model
from dlspark.text.tokenize import load_tokenizer, tokenize_batch
from dlspark.train import TrainJob, run_training
from dlspark.train.checkpoint import CheckpointStore

LENGTH = 16
WORDS = {"positive": ["love", "adore", "enjoy", "like"], "negative": ["hate", "despise", "loathe", "dislike"],
         "neutral": ["saw", "read", "noticed", "met"]}


def write_text_table(root: Path, rows: dict[str, int]) -> Path:
    tok = load_tokenizer("minilm")
    rng = np.random.default_rng(0)
    for split, n in rows.items():
        labels = [("positive", "negative", "neutral")[i % 3] for i in range(n)]
        texts = [f"I {rng.choice(WORDS[label])} this {rng.choice(['film', 'phone', 'song', 'place'])}" for label in labels]
        enc = tokenize_batch(tok, texts, LENGTH)
        table = pa.table({
            "text": texts, "label": labels,
            "label_index": pa.array([{"negative": 0, "neutral": 1, "positive": 2}[v] for v in labels], pa.int32()),
            "input_ids": pa.array(list(enc.input_ids), pa.list_(pa.int32())),
            "attention_mask": pa.array(list(enc.attention_mask), pa.list_(pa.int8())),
        })
        (root / f"split={split}").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"split={split}" / "part-0.parquet")
    return root


def test_frozen_then_finetuned_sentiment(tmp_path):
    table = write_text_table(tmp_path / "text", {"train": 96, "val": 30, "test": 30})
    cfg = TrainConfig(task="sentiment", model="minilm", epochs=2, lr=0.01, warmup_epochs=0.0, early_stopping_patience=0,
                      feed=FeedConfig(batch_size=16, shuffle_buffer=64, reader_threads=1, prefetch_batches=2, augment=False),
                      sentiment=SentimentConfig(unfreeze_top_layers=1, finetune_epochs=1, finetune_lr=1e-4))
    label_map = {"negative": 0, "positive": 1}  # neutral rows are skipped by the feeder
    specs = {s: make_spec(cfg.feed, kind="text", files=[str(table / f"split={s}" / "part-0.parquet")], split=s,
                          max_length=LENGTH, label_map=label_map) for s in ("train", "val", "test")}
    job = TrainJob(config=cfg, train=specs["train"], val=specs["val"], test=specs["test"], num_classes=2,
                   labels=("negative", "positive"), checkpoint_dir=str(tmp_path / "ckpt"), run_name="sentiment")
    result = run_training(job, "local")

    assert [h["phase"] for h in result.history] == ["frozen", "frozen", "finetune"]
    assert result.test_metrics["test_count"] == 20 and result.test_metrics["test_accuracy"] >= 0.85, result.test_metrics
    assert result.model_spec == {"name": "minilm", "encoder": "minilm", "num_classes": 2}
    final = CheckpointStore(str(tmp_path / "ckpt"), "sentiment").latest()[1]["model"]
    pretrained = build_model(result.model_spec).state_dict()
    top, bottom = "encoder.encoder.layer.5.attention.self.query.weight", "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(final[top], pretrained[top])       # fine-tuned
    assert torch.equal(final[bottom], pretrained[bottom])     # stayed frozen
    assert not torch.equal(final["head.1.weight"], pretrained["head.1.weight"])


def test_text_student_trains_and_its_report_shows_mistakes_as_text(tmp_path):
    from dlspark.train.run_report import write_run_report

    table = write_text_table(tmp_path / "text", {"train": 96, "val": 30, "test": 30})
    cfg = TrainConfig(task="sentiment", model="textcnn", epochs=1, lr=0.01, warmup_epochs=0.0, early_stopping_patience=0,
                      feed=FeedConfig(batch_size=16, shuffle_buffer=64, reader_threads=1, prefetch_batches=2, augment=False))
    specs = {s: make_spec(cfg.feed, kind="text", files=[str(table / f"split={s}" / "part-0.parquet")], split=s,
                          max_length=LENGTH, label_map={"negative": 0, "positive": 1}) for s in ("train", "val", "test")}
    job = TrainJob(config=cfg, train=specs["train"], val=specs["val"], test=specs["test"], num_classes=2,
                   labels=("negative", "positive"), checkpoint_dir=str(tmp_path / "ckpt"), run_name="student")
    result = run_training(job, "local")
    assert result.model_spec["name"] == "textcnn" and result.test_metrics["test_count"] == 20
    page = write_run_report(result, job.test, job.labels, tmp_path / "report", {"run": "student"}).read_text()
    assert "<tr><th>test rows</th><td>20</td></tr>" in page
    from dlspark.train.run_report import displayable

    enc = tokenize_batch(load_tokenizer("minilm"), ["I love this film"], LENGTH)
    ids = enc.input_ids[0][: int(enc.attention_mask[0].sum())]
    assert displayable({7: ids}, job.test) == {7: "i love this film"}           # words back, no [CLS] / [SEP]
