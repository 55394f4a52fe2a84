"""Embeddings (the head's input, unit length) and nearest neighbours: exact top-k as the reference, faiss HNSW
judged against it (recall@10 >= 0.95 on clustered vectors), an index saved and loaded answering the same."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from dlspark.embeddings.ann import build_hnsw, exact_topk, load_index, recall_at_k, save_index, search  # noqa: E402
from dlspark.embeddings.vectors import classifier_head, embed  # noqa: E402
from dlspark.models import build_model  # noqa: E402


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_image_embeddings_are_the_heads_input_as_unit_vectors():
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "in_channels": 1, "num_classes": 10, "widths": [4, 8], "hidden": 12}).eval()
    x = torch.randn(5, 1, 16, 16)
    vectors = embed(model, x, 10)
    head = classifier_head(model, 10)
    assert vectors.shape == (5, head.in_features) == (5, 12)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(embed(model, x, 10), vectors)               # the same rows, the same vectors
    assert not head._forward_hooks                                          # the hook is gone afterwards
    with torch.no_grad():                                                   # and it is what the head reads
        logits = model(x)
    captured = []
    head.register_forward_hook(lambda _m, a, _o: captured.append(a[0]))
    with torch.no_grad():
        model(x)
    np.testing.assert_allclose(torch.nn.functional.normalize(captured[0], dim=1).numpy(), vectors, rtol=1e-5, atol=1e-6)
    assert logits.shape == (5, 10)


def test_text_embeddings_come_from_the_servable_model_too():
    from dlspark.models.servable import servable

    model = servable(build_model({"name": "textcnn", "num_classes": 2, "embeddings": None, "vocab_size": 50,
                                  "embed_dim": 8, "kernel_sizes": [3], "channels": 6}), "text")
    stacked = torch.stack([torch.randint(1, 50, (3, 7)), torch.ones(3, 7, dtype=torch.long)], dim=1)
    assert embed(model, stacked, 2).shape == (3, 6)
    with pytest.raises(ValueError, match="no nn.Linear with 5 outputs"):
        embed(model, stacked, 5)


def test_the_onnx_embedding_graph_gives_torchs_vectors_at_any_length(tmp_path):
    pytest.importorskip("onnxruntime")
    from dlspark.embeddings.onnx_embed import onnx_embedder
    from dlspark.models.servable import servable

    torch.manual_seed(0)
    model = servable(build_model({"name": "textcnn", "num_classes": 2, "embeddings": None, "vocab_size": 50,
                                  "embed_dim": 8, "kernel_sizes": [3], "channels": 6}), "text").eval()

    def tokens(n: int, length: int) -> np.ndarray:
        ids = np.random.default_rng(length).integers(1, 50, size=(n, length))
        mask = np.ones_like(ids)
        mask[0, length // 2:] = 0
        return np.stack([ids * mask, mask], axis=1).astype(np.int64)

    embedder = onnx_embedder(model, 2, tokens(3, 12), tmp_path)
    assert embedder.min_cosine >= 0.9999
    for length in (5, 31):                                                   # other lengths than the traced one
        x = tokens(4, length)
        np.testing.assert_allclose(embedder(x), embed(model, torch.from_numpy(x), 2), atol=1e-5)


def test_exact_topk_is_the_brute_force_order_and_each_row_finds_itself():
    x = _clustered(500, 16, 5, 0)
    found = exact_topk(x, x[:50], 10, batch=7)
    brute = np.argsort(-(x[:50] @ x.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(found.ids[:, 0], np.arange(50))
    assert (found.ids == brute).mean() > 0.99 and (np.diff(found.scores, axis=1) <= 1e-6).all()


def test_hnsw_recall_at_10_against_exact_and_a_saved_index_answers_the_same(tmp_path):
    # fuzzy clusters (top-10 similarities ~0.45-0.5, close together): a hard case; ef_search 64 finds 0.88 of them
    x = _clustered(20_000, 32, 50, 1)
    queries = _clustered(500, 32, 50, 2)
    index = build_hnsw(x)
    found = search(index, queries, 10, ef_search=128)
    assert recall_at_k(found, exact_topk(x, queries, 10)) >= 0.95
    save_index(index, tmp_path / "ann" / "index.faiss")
    again = search(load_index(tmp_path / "ann" / "index.faiss"), queries, 10, ef_search=128)
    np.testing.assert_array_equal(again.ids, found.ids)
    low = recall_at_k(search(index, queries, 10, ef_search=10), exact_topk(x, queries, 10))
    assert low <= recall_at_k(found, exact_topk(x, queries, 10))          # ef_search trades recall for speed


def test_a_sharded_index_answers_like_one_over_all_rows_and_saves_its_shards(tmp_path):
    from dlspark.embeddings.index_store import VectorIndex

    x = _clustered(6_000, 32, 50, 3)
    queries = _clustered(300, 32, 50, 4)
    keys = [f"k{i:05d}" for i in range(len(x))]
    labels = [str(i % 7) for i in range(len(x))]
    cuts = [0, 1_000, 3_500, 6_000]                                  # uneven shards, as range partitions give
    shards = [build_hnsw(x[a:b]) for a, b in zip(cuts, cuts[1:])]
    index = VectorIndex.from_shards("key", keys, labels, shards, {"model": "m"}, 32, 200)
    truth = exact_topk(x, queries, 10)
    found = index.search(queries, 10)
    assert found.ids.min() >= 0 and recall_at_k(found, truth) >= 0.95
    assert (np.diff(found.scores, axis=1) <= 1e-6).all()              # merged best first across shards
    assert index.vector("k04321").tolist() == pytest.approx(x[4321].tolist(), abs=1e-6)
    np.testing.assert_allclose(index.vectors(), x, atol=1e-6)
    hits = index.nearest(x[[10, 5_000]], 3, exclude=["k00010", None])
    assert "k00010" not in [h.key for h in hits[0]] and hits[1][0].key == "k05000" and hits[1][0].label == str(5000 % 7)
    index.save(tmp_path / "idx")
    again = VectorIndex.load(tmp_path / "idx")
    assert again.manifest["shards"] == 3 and len(again) == 6_000
    np.testing.assert_array_equal(again.search(queries, 10).ids, found.ids)
    with pytest.raises(ValueError, match="6000 vectors but 5999 keys"):
        VectorIndex.from_shards("key", keys[:-1], labels[:-1], shards, {}, 32, 200)


# ---------------------------------------------------------------- the job on Spark

def _image_table(root, start: int, n: int, bad: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.inference_models import IMAGE_LABELS, IMAGE_SHAPE

    rng = np.random.default_rng(start)
    pixels = [rng.integers(0, 255, size=IMAGE_SHAPE, dtype=np.uint8).tobytes() for _ in range(n)] + [b"\x01" * 3] * bad
    keys = [f"s{i:04d}" for i in range(start, start + n + bad)]
    table = pa.table({"sha256": keys, "label": [IMAGE_LABELS[i % 3] for i in range(len(keys))],
                      "pixels": pa.array(pixels, pa.binary()), "shape": [list(IMAGE_SHAPE)] * len(keys)})
    folder = root / "tables" / "images" / "split=test"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"part-{start}.parquet")


def test_embed_job_is_incremental_and_its_index_finds_each_row_itself(spark, tmp_path):
    import json

    from dlspark.config import load_config
    from dlspark.embeddings.index_store import VectorIndex
    from pipelines.embed import embed as embed_job
    from tests.inference_models import register_image_model

    register_image_model(tmp_path)
    _image_table(tmp_path, 0, 40, bad=1)
    cfg = load_config(pipeline="image_classification", overrides=[
        f"paths.data_dir={tmp_path}", "mlflow.registered_model=test-images", "train.table=tables/images",
        "embed.shard_rows=16"])                                    # 40 vectors, then 50: 3, then 4 shards built per partition
    first = embed_job(spark, cfg, "run-1")
    assert (first.input_rows, first.embedded, first.refused, first.skipped, first.vectors) == (41, 41, 1, 0, 40)
    again = embed_job(spark, cfg, "run-2")
    assert (again.embedded, again.skipped, again.vectors) == (0, 41, 40)      # nothing twice
    _image_table(tmp_path, 100, 10)
    more = embed_job(spark, cfg, "run-3")
    assert (more.embedded, more.skipped, more.vectors) == (10, 41, 50)
    table = spark.read.parquet(more.output)
    assert table.count() == 51 and table.where("error is not null").count() == 1
    folder = tmp_path / "tables" / "embeddings" / "test-images" / "_index" / "test-images-v1"
    keys = json.loads((folder / "keys.json").read_text())["keys"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["vectors"] == 50 == len(keys) and manifest["shards"] == 4 and keys == sorted(keys)
    vectors = {r["sha256"]: r["embedding"] for r in table.where("embedding is not null").collect()}
    queries = np.asarray([vectors[k] for k in keys], np.float32)
    found = VectorIndex.load(folder).search(queries, 1)
    sims = np.asarray([float(np.dot(vectors[keys[i]], vectors[keys[int(j)]])) for i, j in enumerate(found.ids[:, 0])])
    assert (sims > 0.9999).all()          # each row's nearest is itself (or an identical vector)
    from pipelines.embed import find_duplicates, similar

    path, pairs = find_duplicates(spark, cfg, 0.95)
    found = {(r["key_a"], r["key_b"]) for r in spark.read.parquet(path).collect()}
    mat = np.asarray([vectors[k] for k in keys], np.float32)
    sims = mat @ mat.T
    truth = {tuple(sorted((keys[i], keys[j]))) for i in range(len(keys)) for j in range(len(keys))
             if i != j and sims[i, j] >= 0.95 and j in np.argsort(-sims[i])[:11]}
    assert found == truth and pairs == len(found)   # the index finds exactly the exact pairs among each row's 10 nearest
    key, hits = similar(spark, cfg, None, 3)
    assert key == "s0000" and len(hits) == 3 and key not in [h.key for h in hits]
    assert all(h.label is not None for h in hits) and hits[0].similarity >= hits[-1].similarity
