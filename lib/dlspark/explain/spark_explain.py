"""Explanations on the executors: ``mapInArrow`` over a table, Integrated Gradients per batch, one row out per row in.

The model folder ships as batch scoring ships it (``dlspark.inference.spark_scoring.ship_model``); inputs are
validated and decoded by the same code as scoring (``dlspark.inference.scoring.model_inputs``), so a row that
scoring would refuse gets the same error here, in the ``error`` column, and every other column null.

Output per row: the passthrough columns, then ``prediction``, ``probability``, ``attribution_shape`` (``[H, W]``
for images, ``[n]`` for text), ``attributions`` (the map row by row, or one score per attended token),
``tokens`` (text: the tokens the model read), ``convergence`` (IG's relative completeness error) and ``error``.
"""
from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from dlspark.feed.decode import normalize_images
from dlspark.inference.predictors import eager_module
from dlspark.inference.scoring import ScoringSpec, attended_width, model_inputs, raw_text_tokenizer, resolve_model_dir

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

EXPLANATION_DDL = ("prediction string, probability float, attribution_shape array<int>, attributions array<float>, "
                   "tokens array<string>, convergence float, error string")
EXPLANATION_SCHEMA = pa.schema([
    ("prediction", pa.string()), ("probability", pa.float32()), ("attribution_shape", pa.list_(pa.int32())),
    ("attributions", pa.list_(pa.float32())), ("tokens", pa.list_(pa.string())), ("convergence", pa.float32()),
    ("error", pa.string())])


def explain_dataframe(df: DataFrame, spec: ScoringSpec, steps: int) -> DataFrame:
    """One explanation row per row of ``df`` (``spec`` shipped by the caller, see ``ship_model``)."""
    from dlspark.inference.spark_scoring import map_model_batches

    if spec.flavor != "pytorch":
        raise ValueError(f"explanations need the pytorch model, not the {spec.flavor} flavor: explain the source version "
                         "(inference.runtime does not apply here)")
    return map_model_batches(df, spec, partial(explain_batches, spec=spec, steps=steps), EXPLANATION_DDL)


def explain_batches(batches: Iterable[pa.RecordBatch], spec: ScoringSpec, steps: int) -> Iterator[pa.RecordBatch]:
    """Attribute every batch with this process's cached eager model."""
    from dlspark.inference.predictors import set_torch_threads
    from dlspark.inference.scoring import task_cpus

    set_torch_threads(spec.threads or task_cpus())
    model = eager_module(spec.cache_key, resolve_model_dir(spec))
    decode = _token_decoder(spec) if spec.kind == "text" else None
    tokenizer = raw_text_tokenizer(spec)
    for batch in batches:
        yield explain_record_batch(batch, spec, model, steps, decode, tokenizer)


def explain_record_batch(batch: pa.RecordBatch, spec: ScoringSpec, model: Any, steps: int,
                         decode: Any = None, tokenizer: Any = None) -> pa.RecordBatch:
    """Passthrough columns + :data:`EXPLANATION_SCHEMA` columns for one batch (rows in input order); ``tokenizer``:
    for a raw text column (``text_mode: text``), as scoring takes it."""
    from dlspark.explain.attributions import explain_images, explain_tokens

    inputs = model_inputs(batch, spec, tokenizer)
    n = batch.num_rows
    prediction: list[str | None] = [None] * n
    probability: list[float | None] = [None] * n
    shapes: list[list[int] | None] = [None] * n
    scores: list[list[float] | None] = [None] * n
    tokens: list[list[str] | None] = [None] * n
    convergence: list[float | None] = [None] * n
    size = spec.batch_size
    for start in range(0, len(inputs.valid), size):
        rows = inputs.valid[start:start + size]
        if spec.kind == "image":
            pre = spec.preprocessing
            x = normalize_images(inputs.arrays["pixels"][start:start + size], pre["mean"], pre["std"], channels_last=False)
            out = explain_images(model, x, pre["mean"], pre["std"], steps=steps)
            maps = [m for m in out.scores]
        else:
            ids = inputs.arrays["input_ids"][start:start + size]
            mask = inputs.arrays["attention_mask"][start:start + size]
            width = attended_width(mask)
            out = explain_tokens(model, ids[:, :width], mask[:, :width], steps=steps, pad_id=getattr(decode, "pad_id", 0))
            maps = [s[m[:width] != 0] for s, m in zip(out.scores, mask)]
            for i, (row_ids, row_mask) in zip(rows, zip(ids, mask)):
                tokens[i] = decode(row_ids[row_mask != 0]) if decode else None
        for j, i in enumerate(rows):
            prediction[i] = spec.labels[int(out.target[j])]
            probability[i] = float(out.probability[j])
            shapes[i] = list(maps[j].shape)
            scores[i] = maps[j].astype(np.float32).ravel().tolist()
            convergence[i] = float(out.convergence[j])
    errors = inputs.errors if inputs.errors else [None] * n
    columns = [batch.column(name) for name in spec.passthrough]
    fields = [batch.schema.field(name) for name in spec.passthrough]
    arrays = [pa.array(prediction, pa.string()), pa.array(probability, pa.float32()),
              pa.array(shapes, pa.list_(pa.int32())), pa.array(scores, pa.list_(pa.float32())),
              pa.array(tokens, pa.list_(pa.string())), pa.array(convergence, pa.float32()), pa.array(errors, pa.string())]
    return pa.RecordBatch.from_arrays(columns + arrays, schema=pa.schema(fields + list(EXPLANATION_SCHEMA)))


def _token_decoder(spec: ScoringSpec) -> Any:
    """ids -> the tokenizer's token strings, from the tokenizer the model's preprocessing names."""
    from dlspark.inference.inputs import TextPreprocessing
    from dlspark.text.tokenize import load_tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tokenizer = load_tokenizer(TextPreprocessing.from_spec(spec.preprocessing, spec.text_fallback).tokenizer)
    except Exception:  # noqa: BLE001 - tokens are a convenience; the scores stand without them
        return None
    rust = tokenizer.rust
    decode = lambda ids: [rust.id_to_token(int(t)) or f"[{int(t)}]" for t in ids]  # noqa: E731
    decode.pad_id = tokenizer.pad_id  # type: ignore[attr-defined]
    return decode
