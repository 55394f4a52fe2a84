"""Embeddings on the executors: ``mapInArrow`` over a table, the model's head input per row (one row out per row
in). The model ships and inputs are validated as in batch scoring, so a refused row keeps its reason in ``error``."""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import pyarrow as pa

from dlspark.inference.predictors import eager_module
from dlspark.inference.scoring import ScoringSpec, model_inputs, raw_text_tokenizer, resolve_model_dir

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

EMBEDDING_DDL = "embedding array<float>, error string"


def embed_dataframe(df: DataFrame, spec: ScoringSpec) -> DataFrame:
    """``spec.passthrough`` columns + ``embedding`` (unit vector, null for a refused row) + ``error``."""
    from dlspark.inference.spark_scoring import map_model_batches

    if spec.flavor != "pytorch":
        raise ValueError(f"embeddings need the pytorch model, not the {spec.flavor} flavor: embed the source version")
    return map_model_batches(df, spec, partial(embed_batches, spec=spec), EMBEDDING_DDL)


def embed_batches(batches: Iterable[pa.RecordBatch], spec: ScoringSpec) -> Iterator[pa.RecordBatch]:
    from dlspark.inference.predictors import set_torch_threads
    from dlspark.inference.scoring import task_cpus

    set_torch_threads(spec.threads or task_cpus())
    model = eager_module(spec.cache_key, resolve_model_dir(spec))
    tokenizer = raw_text_tokenizer(spec)
    for batch in batches:
        yield embed_record_batch(batch, spec, model, tokenizer)


def embed_record_batch(batch: pa.RecordBatch, spec: ScoringSpec, model: Any, tokenizer: Any = None) -> pa.RecordBatch:
    from dlspark.embeddings.vectors import embed_inputs

    inputs = model_inputs(batch, spec, tokenizer)
    vectors: list[list[float] | None] = [None] * batch.num_rows
    found = embed_inputs(model, inputs, spec.kind, spec.preprocessing, len(spec.labels), spec.batch_size)
    for i, v in zip(inputs.valid, found):
        vectors[i] = v.tolist()
    errors = inputs.errors if inputs.errors else [None] * batch.num_rows
    columns = [batch.column(name) for name in spec.passthrough]
    fields = [batch.schema.field(name) for name in spec.passthrough]
    schema = pa.schema(fields + [("embedding", pa.list_(pa.float32())), ("error", pa.string())])
    return pa.RecordBatch.from_arrays(columns + [pa.array(vectors, pa.list_(pa.float32())), pa.array(errors, pa.string())],
                                      schema=schema)
