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


SHARD_DDL = "first_key string, keys array<string>, labels array<string>, shard binary"


def build_index_shards(vectors: DataFrame, key: str, shard_rows: int, hnsw_m: int, ef_construction: int,
                       manifest: dict[str, Any]) -> Any:
    """A :class:`~dlspark.embeddings.index_store.VectorIndex` of ``vectors`` (``key``, ``embedding`` unit vectors,
    ``label``; one row per key) built on the executors: the rows are range-partitioned by key into
    ``ceil(rows / shard_rows)`` partitions, each task builds the HNSW graph of its partition and returns it
    serialized, and the driver gathers the shards in key order. None when there is no vector."""
    from pyspark.sql import functions as F

    from dlspark.embeddings.index_store import VectorIndex

    rows = vectors.count()
    if not rows:
        return None
    shards = -(-rows // shard_rows)
    parts = (vectors.select(F.col(key).cast("string").alias("key"), "embedding", F.col("label").cast("string").alias("label"))
             .repartitionByRange(shards, "key").sortWithinPartitions("key"))
    built = sorted(parts.mapInArrow(partial(_shard_batches, hnsw_m=hnsw_m, ef_construction=ef_construction),
                                    SHARD_DDL).collect(), key=lambda r: r["first_key"])
    keys = [k for r in built for k in r["keys"]]
    labels = [label for r in built for label in r["labels"]]
    indexes = [deserialize_shard(r["shard"]) for r in built]
    return VectorIndex.from_shards(key, keys, labels, indexes, manifest, hnsw_m, ef_construction)


def _shard_batches(batches: Iterable[pa.RecordBatch], hnsw_m: int, ef_construction: int) -> Iterator[pa.RecordBatch]:
    """One partition's rows (sorted by key) -> one row: its HNSW graph, serialized, with its keys and labels."""
    import numpy as np

    from dlspark.embeddings.ann import build_hnsw

    table = pa.Table.from_batches(list(batches))
    if not table.num_rows:
        return
    embedding = table.column("embedding").combine_chunks()
    dim = len(embedding[0])
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    index = build_hnsw(vectors, m=hnsw_m, ef_construction=ef_construction)
    keys = table.column("key").to_pylist()
    yield pa.RecordBatch.from_pydict({"first_key": [keys[0]], "keys": [keys], "labels": [table.column("label").to_pylist()],
                                      "shard": [serialize_shard(index)]},
                                     schema=pa.schema([("first_key", pa.string()), ("keys", pa.list_(pa.string())),
                                                       ("labels", pa.list_(pa.string())), ("shard", pa.binary())]))


def serialize_shard(index: Any) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def deserialize_shard(blob: bytes) -> Any:
    import faiss
    import numpy as np

    return faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
