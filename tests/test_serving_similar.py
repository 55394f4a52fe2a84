"""GET/POST /similar: nearest rows from the embeddings index of the served version, answered like the embed job
(exact neighbours on a small index), 503 before the index exists, a rebuilt index swapped in, clear errors."""
from __future__ import annotations

import base64
import io

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytest.importorskip("faiss")

from dlspark.config import load_config  # noqa: E402
from dlspark.config.schema import ServeConfig  # noqa: E402
from dlspark.embeddings.index_store import VectorIndex, index_location  # noqa: E402
from dlspark.embeddings.vectors import embed_inputs  # noqa: E402
from dlspark.inference.inputs import image_inputs  # noqa: E402
from dlspark.inference.model import download_model, resolve_model  # noqa: E402
from dlspark.inference.predictors import eager_module  # noqa: E402
from dlspark.serving import ModelService, create_app, load_served_model  # noqa: E402
from dlspark.serving.factory import similar_service  # noqa: E402
from tests.inference_models import IMAGE_LABELS, IMAGE_SHAPE, register_image_model  # noqa: E402

FAST = ServeConfig(max_batch=16, max_wait_ms=2, queue_size=64, reload_seconds=0)


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 else pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def _write_index(cfg, target, pixels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """What jobs/embed.py leaves beside the table, built here from the champion's own embeddings of ``pixels``."""
    ref = resolve_model(target, "models:/test-images@champion")
    bundle = download_model(target, ref)
    module = eager_module(ref.uri, bundle.local_dir)
    inputs = image_inputs(pa.table({"pixels": pa.array([p.tobytes() for p in pixels], pa.binary())}), IMAGE_SHAPE)
    vectors = embed_inputs(module, inputs, "image", bundle.preprocessing, len(IMAGE_LABELS))
    keys = [f"k{i:03d}" for i in range(len(pixels))]
    labels = [IMAGE_LABELS[i % len(IMAGE_LABELS)] for i in range(len(pixels))]
    VectorIndex.build("sha256", keys, labels, vectors, {"model": ref.label}).save(index_location(cfg, ref.name, ref.version)[1])
    return keys, vectors


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = tmp_path_factory.mktemp("similar")
    target = register_image_model(data)
    cfg = load_config(pipeline=["ingest_images", "image_classification"], overrides=[
        f"paths.data_dir={data}", "mlflow.registered_model=test-images", "ingest_images.resize=stretch"])
    pixels = np.random.default_rng(3).integers(0, 256, size=(60, *IMAGE_SHAPE), dtype=np.uint8)
    return cfg, target, pixels


def _champion(target) -> ModelService:
    service = ModelService(lambda: resolve_model(target, "models:/test-images@champion"),
                           lambda ref: load_served_model(download_model(target, ref), resize="stretch"))
    service.refresh()
    return service


def test_similar_answers_from_the_index_by_id_and_by_posted_image(setup):
    cfg, target, pixels = setup
    similar = similar_service(cfg, target)
    assert similar is not None
    with TestClient(create_app(_champion(target), FAST, similar=similar)) as client:
        missing = client.get("/similar", params={"id": "k000"})
        assert missing.status_code == 503 and missing.json()["reason"] == "no_index"     # no index yet: says so
        keys, vectors = _write_index(cfg, target, pixels[:50])
        assert similar.refresh() is True and similar.ready
        assert similar.model.embedder is not None and similar.model.embedder.min_cosine >= 0.9999   # onnxruntime
        r = client.get("/similar", params={"id": "k007", "k": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["indexed"] == 50 and body["version"] == "1"
        sims = vectors @ vectors[7]
        exact = [keys[i] for i in np.argsort(-sims) if keys[i] != "k007"][:4]
        assert [h["id"] for h in body["neighbours"]] == exact                  # the exact neighbours, itself left out
        np.testing.assert_allclose([h["similarity"] for h in body["neighbours"]], np.sort(sims)[::-1][1:5], atol=1e-5)
        assert body["neighbours"][0]["label"] in IMAGE_LABELS

        posted = client.post("/similar?k=3", content=_png(pixels[12]), headers={"content-type": "image/png"})
        assert posted.status_code == 200, posted.text
        first = posted.json()["results"][0]["neighbours"][0]
        assert first["id"] == "k012" and first["similarity"] > 0.9999           # the same image finds its own row
        new = client.post("/similar", json={"instances": [{"image_b64": base64.b64encode(_png(p)).decode()}
                                                          for p in pixels[55:57]]})
        assert new.status_code == 200 and len(new.json()["results"]) == 2
        for got, p in zip(new.json()["results"], pixels[55:57]):              # unseen images: the exact nearest rows
            inputs = image_inputs(pa.table({"pixels": [p.tobytes()]}), IMAGE_SHAPE)
            assert got["neighbours"][0]["id"] == keys[int(np.argmax(vectors @ _embed_like(similar, inputs)[0]))]

        assert client.get("/similar", params={"id": "nope"}).json()["reason"] == "unknown_id"
        assert client.get("/similar", params={"id": "k001", "k": 0}).json()["reason"] == "bad_k"
        assert client.get("/similar").json()["reason"] == "no_id"
        text = client.post("/similar", json={"text": "hello"})
        assert text.status_code == 422 and text.json()["reason"] == "wrong_kind"
        metrics = client.get("/metrics").text
        assert 'dlspark_serve_similar_requests_total{method="GET",status="200"} 1.0' in metrics
        assert 'dlspark_serve_similar_requests_total{method="POST",status="200"} 2.0' in metrics

        before = similar.model
        _write_index(cfg, target, pixels)                                      # the embed job rebuilt it: 60 rows
        assert similar.refresh() is True
        assert similar.model.embedder is before.embedder and similar.model.served is before.served   # not reloaded
        assert client.get("/similar", params={"id": "k059"}).json()["indexed"] == 60
        assert similar.refresh() is False                                      # unchanged: nothing reloaded


def _embed_like(similar: ModelService, inputs) -> np.ndarray:
    model = similar.model
    return embed_inputs(model.embedder or model.module, inputs, "image", model.served.spec.preprocessing, len(IMAGE_LABELS))


def test_similar_is_404_when_switched_off(setup):
    cfg, target, _ = setup
    off = load_config(pipeline=["ingest_images", "image_classification"], overrides=[
        f"paths.data_dir={cfg.paths.data_dir}", "mlflow.registered_model=test-images", "serve.similar.enabled=false"])
    assert similar_service(off, target) is None
    with TestClient(create_app(_champion(target), FAST)) as client:
        r = client.get("/similar", params={"id": "k000"})
    assert r.status_code == 404 and r.json()["reason"] == "similar_off"
