"""Embeddings on the executors: ``mapInArrow`` over a table, the model's head input per row (one row out per row
in). The model ships and inputs are validated as in batch scoring, so a refused row keeps its reason in ``error``."""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from dlspark.feed.decode import normalize_images
from dlspark.inference.predictors import eager_module
from dlspark.inference.scoring import ScoringSpec, attended_width, model_inputs, raw_text_tokenizer, resolve_model_dir

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

EMBEDDING_DDL = "embedding array<float>, error string"


def embed_dataframe(df: DataFrame, spec: ScoringSpec) -> DataFrame:
    """``spec.passthrough`` columns + ``embedding`` (unit vector, null for a refused row) + ``error``."""
    from dlspark.inference.spark_scoring import input_columns

    if spec.flavor != "pytorch":
        raise ValueError(f"embeddings need the pytorch model, not the {spec.flavor} flavor: embed the source version")
    schema = ", ".join([f"`{f.name}` {f.dataType.simpleString()}" for f in df.select(*spec.passthrough).schema.fields]
                       + [EMBEDDING_DDL])
    wanted = list(dict.fromkeys([*spec.passthrough, *input_columns(df.columns, spec)]))
    return df.select(*wanted).mapInArrow(partial(embed_batches, spec=spec), schema)


def embed_batches(batches: Iterable[pa.RecordBatch], spec: ScoringSpec) -> Iterator[pa.RecordBatch]:
    from dlspark.inference.predictors import set_torch_threads
    from dlspark.inference.scoring import task_cpus

    set_torch_threads(spec.threads or task_cpus())
    model = eager_module(spec.cache_key, resolve_model_dir(spec))
    tokenizer = raw_text_tokenizer(spec)
    for batch in batches:
        yield embed_record_batch(batch, spec, model, tokenizer)


def embed_record_batch(batch: pa.RecordBatch, spec: ScoringSpec, model: Any, tokenizer: Any = None) -> pa.RecordBatch:
    import torch

    from dlspark.embeddings.vectors import embed

    inputs = model_inputs(batch, spec, tokenizer)
    vectors: list[list[float] | None] = [None] * batch.num_rows
    for start in range(0, len(inputs.valid), spec.batch_size):
        rows = inputs.valid[start:start + spec.batch_size]
        if spec.kind == "image":
            pre = spec.preprocessing
            pixels = inputs.arrays["pixels"][start:start + spec.batch_size]
            x: Any = torch.from_numpy(normalize_images(pixels, pre["mean"], pre["std"], channels_last=False))
        else:
            ids = inputs.arrays["input_ids"][start:start + spec.batch_size]
            mask = inputs.arrays["attention_mask"][start:start + spec.batch_size]
            width = attended_width(mask)
            x = torch.from_numpy(np.stack([ids[:, :width], mask[:, :width]], axis=1).astype(np.int64))
        for i, v in zip(rows, embed(model, x, len(spec.labels))):
            vectors[i] = v.tolist()
    errors = inputs.errors if inputs.errors else [None] * batch.num_rows
    columns = [batch.column(name) for name in spec.passthrough]
    fields = [batch.schema.field(name) for name in spec.passthrough]
    schema = pa.schema(fields + [("embedding", pa.list_(pa.float32())), ("error", pa.string())])
    return pa.RecordBatch.from_arrays(columns + [pa.array(vectors, pa.list_(pa.float32())), pa.array(errors, pa.string())],
                                      schema=schema)
