"""Near-dedup by embeddings: the greedy rule (pure), and ingest's optional stage on local[2] (planted near-copies
dropped as duplicates and listed, against each other and against the model version's index; counts reconcile)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss")

from dlspark.embeddings.dedup import near_duplicates  # noqa: E402
from dlspark.embeddings.index_store import VectorIndex  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_greedy_rule_names_the_earliest_kept_row_and_the_index_first():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(6, 32)))
    near = lambda v, s: _unit(v[None, :] + s * rng.normal(size=(1, 32)))[0]  # noqa: E731
    # rows: 0 1 2 | 3 = copy of 1 | 4 = copy of 3 (so of 1 too) | 5 = copy of an indexed row | 6 distinct
    indexed = _unit(rng.normal(size=(20, 32)))
    new = np.stack([base[0], base[1], base[2], near(base[1], 0.01), near(base[1], 0.012), near(indexed[7], 0.01), base[5]])
    keys = [f"n{i}" for i in range(len(new))]
    existing = VectorIndex.build("sha256", [f"old{i}" for i in range(20)], [None] * 20, indexed, {})
    found = near_duplicates(keys, new, 0.99, existing)
    assert [(d.position, d.duplicate_of, d.in_index) for d in found] == [(3, "n1", False), (4, "n1", False), (5, "old7", True)]
    assert all(d.similarity >= 0.99 for d in found)
    assert near_duplicates(keys, new, 0.99) == [d for d in found if not d.in_index]   # no index: only among the new
    assert near_duplicates(keys, new, 0.9999999) == []                                   # a stricter threshold: none
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        near_duplicates(keys, new, 1.5)


def test_greedy_rule_at_scale_matches_a_brute_force_pass():
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(5000, 16)))
    copies = rng.choice(5000, 300, replace=False)
    x = np.concatenate([x, _unit(x[copies] + 0.01 * rng.normal(size=(300, 16)))])       # 5300 rows: the HNSW path
    order = rng.permutation(len(x))
    x = x[order]
    keys = [str(i) for i in range(len(x))]
    found = near_duplicates(keys, x, 0.995)
    sims = x @ x.T
    kept, brute = [], {}
    for i in range(len(x)):                                      # the rule, by brute force over all earlier kept rows
        best = max(((sims[i, j], j) for j in kept if sims[i, j] >= 0.995), default=None)
        if best is None:
            kept.append(i)
        else:
            brute[i] = best[1]
    got = {d.position: int(d.duplicate_of) for d in found}
    assert len(brute) >= 300 and got == brute


# ---------------------------------------------------------------- the ingest stage on Spark

def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def _landing(root: Path, files: dict[str, np.ndarray]) -> None:
    for name, pixels in files.items():
        path = root / "landing" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(pixels))


def _one_pixel_changed(pixels: np.ndarray, at: int) -> np.ndarray:
    out = pixels.copy()
    out.flat[at] = (int(out.flat[at]) + 3) % 256
    return out


def _threshold_between(target, distinct: list[np.ndarray], originals: list[np.ndarray], copies: list[np.ndarray]) -> float:
    """A cosine threshold between the most similar distinct pair and the least similar copy (the tiny untrained CNN
    maps every image close together, so the test derives it from the model rather than assuming one)."""
    import pyarrow as pa

    from dlspark.embeddings.vectors import embed_inputs
    from dlspark.inference.inputs import image_inputs
    from dlspark.inference.model import download_model, resolve_model
    from dlspark.inference.predictors import eager_module
    from tests.inference_models import IMAGE_SHAPE

    bundle = download_model(target, resolve_model(target, "models:/test-images@champion"))
    module = eager_module(bundle.ref.uri, bundle.local_dir)

    def vectors(images: list[np.ndarray]) -> np.ndarray:
        inputs = image_inputs(pa.table({"pixels": pa.array([p.tobytes() for p in images], pa.binary())}), IMAGE_SHAPE)
        return embed_inputs(module, inputs, "image", bundle.preprocessing, 3)

    v = vectors(distinct)
    sims = v @ v.T
    most_alike = float(sims[~np.eye(len(v), dtype=bool)].max())
    least_copy = float(np.min(np.sum(vectors(originals) * vectors(copies), axis=1)))
    assert least_copy - most_alike > 2e-5, (most_alike, least_copy)     # the premise: copies are closer than distinct
    return round((most_alike + least_copy) / 2, 7)


def test_ingest_near_dedup_drops_planted_near_copies_and_lists_them(spark, tmp_path):
    from pyspark.sql import functions as F

    from dlspark.config import load_config
    from dlspark.ingest.near_dedup import near_duplicates_table
    from pipelines.embed import embed as embed_job
    from pipelines.ingest_images import ingest_images
    from tests.inference_models import register_image_model

    target = register_image_model(tmp_path)
    # a near-copy differs from its original in one pixel (another sha256); the run-2 files come later
    rng = np.random.default_rng(5)
    images = [np.kron(rng.integers(0, 256, size=(4, 4)), np.ones((2, 2))).astype(np.uint8) for _ in range(11)]
    copies = {"dog/zz_copy_of_00.png": _one_pixel_changed(images[0], 9), "cat/zz_copy_of_03.png": _one_pixel_changed(images[3], 20)}
    later = {"dog/new_copy_of_05.png": _one_pixel_changed(images[5], 30), "cat/new.png": images[10]}
    threshold = _threshold_between(target, images, [images[0], images[3], images[5]],
                                   [*copies.values(), later["dog/new_copy_of_05.png"]])
    _landing(tmp_path, {**{f"{'cat' if i % 2 else 'dog'}/{i:02d}.png": p for i, p in enumerate(images[:10])}, **copies})
    cfg = load_config(overrides=[
        f"paths.data_dir={tmp_path}", "ingest_images.input=landing", "ingest_images.size=[8,8]",
        "ingest_images.color_mode=L", "ingest_images.resize=stretch", "mlflow.registered_model=test-images",
        "ingest_images.near_dedup.model=models:/test-images@champion", f"ingest_images.near_dedup.threshold={threshold}",
        "train.table=tables/images"])
    first = ingest_images(spark, cfg, "run-1")
    c = first.counts
    assert (c.seen, c.written, c.duplicates, c.quarantined) == (12, 10, 2, 0)
    near = first.summary["near_dedup"]
    assert (near["near_duplicates"], near["of_indexed_rows"], near["embedded"]) == (2, 0, 12)
    listed = spark.read.parquet(near_duplicates_table(f"{tmp_path}/tables/images"))
    table = spark.read.parquet(f"{tmp_path}/tables/images")
    sha = {r["path"].rsplit("/", 1)[1]: r["sha256"] for r in table.select("path", "sha256").collect()}
    got = {r["record_id"].rsplit("/", 1)[1]: (r["duplicate_of_sha256"], r["similarity"]) for r in listed.collect()}
    assert set(got) == {"zz_copy_of_00.png", "zz_copy_of_03.png"}
    assert got["zz_copy_of_00.png"][0] == sha["00.png"] and got["zz_copy_of_03.png"][0] == sha["03.png"]
    assert table.count() == 10 and not table.where(F.col("path").contains("zz_copy")).count()   # dropped from the table

    embed_job(spark, cfg, "embed-1")                     # the version's index now holds the 10 rows
    _landing(tmp_path, later)
    second = ingest_images(spark, cfg, "run-2")
    c = second.counts
    assert (c.files_new, c.seen, c.written, c.duplicates) == (2, 2, 1, 1)
    assert second.summary["near_dedup"]["of_indexed_rows"] == 1              # found through the index
    listed = spark.read.parquet(near_duplicates_table(f"{tmp_path}/tables/images"))
    assert listed.where(F.col("ingest_run_id") == "run-2").first()["duplicate_of_sha256"] == sha["05.png"]


def test_text_ingest_near_dedup_drops_rewordings_of_the_same_text(spark, tmp_path):
    from dlspark.config import load_config
    from dlspark.ingest.near_dedup import near_duplicates_table
    from pipelines.ingest_text import ingest_text
    from tests.inference_models import register_text_model

    register_text_model(tmp_path, max_length=16)
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.csv").write_text(
        "label,text\n"
        "positive,the battery lasts all day and the screen is great\n"
        "negative,terrible customer service and I will never order again\n"
        "positive,the battery lasts all day and the screen is great!!\n"     # another sha256 after normalisation
        "negative,I waited two hours in the rain for a taxi that never came\n"
        "positive,The battery lasts all day and the screen is great.\n")
    cfg = load_config(overrides=[
        f"paths.data_dir={tmp_path}", "ingest_text.input=landing", "ingest_text.labels=[negative,positive]",
        "ingest_text.max_length=16", "mlflow.registered_model=test-sentiment",
        "ingest_text.near_dedup.model=models:/test-sentiment@champion", "ingest_text.near_dedup.threshold=0.95"])
    report = ingest_text(spark, cfg, "run-1")
    c = report.counts
    assert (c.seen, c.written, c.duplicates, c.quarantined) == (5, 3, 2, 0)
    kept = {r["text"] for r in spark.read.parquet(f"{tmp_path}/tables/text").collect()}
    assert "the battery lasts all day and the screen is great" in kept and len(kept) == 3
    listed = spark.read.parquet(near_duplicates_table(f"{tmp_path}/tables/text")).collect()
    assert len(listed) == 2 and all(r["similarity"] >= 0.95 for r in listed)
    assert report.summary["near_dedup"]["index"] is None       # no index of the version yet: the run's rows only
