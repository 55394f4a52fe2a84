"""The report of one finished torch training run: the best model over the test split, written beside its checkpoints
(``<checkpoint_dir>/<run_name>/report/``) and logged to the MLflow run (``report/``). See :mod:`dlspark.train.report`.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dlspark.train.report import SplitPredictions, write_report

log = logging.getLogger(__name__)


def write_run_report(result: Any, test: Any, labels: tuple[str, ...], folder: str | Path, facts: Mapping[str, Any],
                     tokenizer: str = "minilm") -> Path:
    """Score the test split (``test``: its FeedSpec) with the run's best model in this process and write the report
    (``tokenizer``: what turns text rows' ids back into words, ``ingest_text.tokenizer``)."""
    keras = result.model_spec.get("name") == "keras_cnn"
    out = _keras_predictions(result, test) if keras else _torch_predictions(result, test)
    shown = replace(test, channels_last=True) if out.get("channels_last") else test
    pred = SplitPredictions(out["probs"], out["y"], labels, displayable(out["examples"], shown, tokenizer))
    return write_report(folder, f"Training report: {facts.get('run', '')}", result.history, pred, facts)


def _torch_predictions(result: Any, test: Any) -> dict[str, Any]:
    from dlspark.config import TrainConfig
    from dlspark.models.servable import load_trained_model
    from dlspark.train.runtime import resolve_runtime
    from dlspark.train.steps import predict_split

    model = load_trained_model(result.model_path, result.model_spec)
    rt = resolve_runtime(TrainConfig(), 0, image_model=test.kind == "image")
    return predict_split(model.to(rt.device), test, rt)


def _keras_predictions(result: Any, test: Any, keep_mistakes: int = 20) -> dict[str, Any]:
    """The Keras model's probabilities over the test split (NHWC images), with its most confident mistakes' inputs."""
    from dataclasses import replace

    from dlspark.feed import open_batches
    from dlspark.train.tf_loop import load_best_keras_model

    model, spec = load_best_keras_model(result), replace(test, channels_last=True)
    probs, ys = [], []
    with open_batches(spec) as batches:
        for batch in batches:
            logits = np.asarray(model(batch["x"], training=False))
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs.append(z / z.sum(axis=1, keepdims=True))
            ys.append(batch["y"])
    p, y = np.concatenate(probs), np.concatenate(ys)
    from dlspark.train.report import SplitPredictions, confident_mistakes

    rows = confident_mistakes(SplitPredictions(p, y, tuple(str(i) for i in range(p.shape[1]))), keep_mistakes)
    examples, wanted = {}, set(int(r) for r in rows)
    with open_batches(spec) as batches:        # a second pass holds only the few inputs shown
        offset = 0
        for batch in batches:
            for i in range(len(batch["y"])):
                if offset + i in wanted:
                    examples[offset + i] = batch["x"][i].copy()
            offset += len(batch["y"])
    return {"probs": p, "y": y, "examples": examples, "channels_last": True}


def displayable(examples: Mapping[int, np.ndarray], spec: Any, tokenizer: str = "minilm") -> dict[int, Any]:
    """Model inputs as a person looks at them: images back to uint8 ``[H, W, C]``, token ids back to text."""
    if spec.kind == "image":
        mean, std = (np.asarray(v, np.float32) for v in spec.mean_std)
        out = {}
        for row, x in examples.items():
            hwc = x if spec.channels_last else np.transpose(x, (1, 2, 0))
            out[row] = np.clip((hwc * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return out
    from dlspark.text.tokenize import load_tokenizer

    rust = load_tokenizer(tokenizer).rust
    return {row: rust.decode([int(t) for t in ids], skip_special_tokens=True) for row, ids in examples.items()}
