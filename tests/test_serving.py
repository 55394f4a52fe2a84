"""REST serving: payload parsing, the micro-batcher, and the app on the tiny registered models (no real port)."""
from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from dlspark.config.schema import ServeConfig
from dlspark.inference.model import download_model, resolve_model
from dlspark.inference.scoring import score_record_batch
from dlspark.serving import MicroBatcher, ModelService, QueueFull, create_app, load_served_model
from dlspark.serving.payload import PayloadError, parse_payload
from dlspark.tracking import promote
from tests.inference_models import IMAGE_LABELS, image_model, register_image_model, register_text_model

FAST = ServeConfig(max_batch=16, max_wait_ms=2, queue_size=64, max_payload_bytes=4096, reload_seconds=0)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def expected_probs(pixels: np.ndarray) -> np.ndarray:
    """The tiny CNN scored directly on [n, 8, 8] uint8 pixels (mean 0.5, std 0.25 as its preprocessing says)."""
    x = torch.from_numpy(pixels[:, None].astype(np.float32) / 255.0)
    with torch.no_grad():
        return torch.softmax(image_model()((x - 0.5) / 0.25), dim=1).numpy()


def registry_service(target, uri: str, predictor=None) -> ModelService:
    return ModelService(lambda: resolve_model(target, uri),
                        lambda ref: load_served_model(download_model(target, ref), resize="stretch", predictor=predictor))


@pytest.fixture(scope="module")
def image_target(tmp_path_factory):
    return register_image_model(tmp_path_factory.mktemp("serve-images"))


@pytest.fixture(scope="module")
def image_client(image_target):
    service = registry_service(image_target, "models:/test-images@champion")
    service.refresh()
    with TestClient(create_app(service, FAST)) as client:
        yield client


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(5, 8, 8), dtype=np.uint8)


# ---- payloads (pure) ----

def test_parse_payload_forms():
    assert parse_payload(b"\x89PNG", "image/png")[0].image == b"\x89PNG"
    assert [i.text for i in parse_payload(b'{"instances": [{"text": "a"}, {"text": "b"}]}', "application/json")] == ["a", "b"]
    assert parse_payload(b'{"text": "hi"}', "application/json; charset=utf-8")[0].text == "hi"
    b64 = base64.b64encode(b"abc").decode()
    assert parse_payload(f'{{"instances": [{{"image_b64": "{b64}"}}]}}'.encode(), None)[0].image == b"abc"


@pytest.mark.parametrize("body,ctype,status,needle", [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b'{"instances": []}', "application/json", 422, "non-empty list"),
    (b'{"instances": [{"text": "a"}, {"image_b64": "@@@"}]}', "application/json", 422, "instance 1"),
    (b'{"instances": [{"pixels": [1, 2]}]}', "application/json", 422, "exactly one of"),
    (b"x", "application/xml", 415, "unsupported Content-Type"),
])
def test_parse_payload_rejects(body, ctype, status, needle):
    with pytest.raises(PayloadError, match=needle) as err:
        parse_payload(body, ctype)
    assert err.value.status == status


# ---- micro-batcher (no HTTP) ----

def test_batcher_merges_concurrent_submits_and_keeps_order():
    sizes: list[int] = []

    def run(items):
        sizes.append(len(items))
        time.sleep(0.02)
        return [x * 10 if x != 3 else ValueError("bad 3") for x in items]

    async def main():
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=20, queue_size=100)
        await batcher.start()
        results = await asyncio.gather(*[batcher.submit([i]) for i in range(10)], return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [r if not isinstance(r, Exception) else str(r) for r in results] == \
        [[0], [10], [20], "bad 3", [40], [50], [60], [70], [80], [90]]
    assert sum(sizes) == 10 and max(sizes) == 4 and len(sizes) <= 4


def test_batcher_refuses_when_full():
    async def main():
        batcher = MicroBatcher(lambda items: items, max_batch=1, max_wait_ms=0, queue_size=2)
        await batcher.start()
        with pytest.raises(QueueFull, match="queue holds 2"):
            await batcher.submit([1, 2, 3])
        assert await batcher.submit([1, 2]) == [1, 2]
        await batcher.stop()

    asyncio.run(main())


# ---- the app on the tiny image model ----

def test_batcher_refuses_past_its_latency_budget_at_once_and_admitted_items_keep_it():
    """20 ms of forward pass per item, a 60 ms budget: of 40 callers, about three are admitted per wait window;
    the rest get QueueFull at once (no waiting), and no admitted item waits much past the budget."""
    def run(items):
        time.sleep(0.02 * len(items))
        return items

    async def main():
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=0, queue_size=1000, max_queue_ms=60)
        await batcher.start()
        await batcher.submit([0])                     # one batch measures the cost per item
        assert batcher.item_seconds == pytest.approx(0.02, abs=0.015)

        async def call(i):
            start = time.perf_counter()
            try:
                batcher.admit(1)
            except QueueFull as exc:
                return "refused", time.perf_counter() - start, exc
            await batcher.submit([i])
            return "ok", time.perf_counter() - start, None

        out = await asyncio.gather(*(call(i) for i in range(40)))
        await batcher.stop()
        return out

    out = asyncio.run(main())
    refused = [(s, e) for kind, s, e in out if kind == "refused"]
    admitted = [s for kind, s, _ in out if kind == "ok"]
    assert 1 <= len(admitted) <= 6 and len(refused) == 40 - len(admitted)
    assert all(e.reason == "over_capacity" and "serve.max_queue_ms" in str(e) for _, e in refused)
    assert max(s for s, _ in refused) < 0.02                   # refusals do not wait (a queued item waits >= 20 ms)
    assert max(admitted) < 0.060 + 0.02 * 4 + 0.05                            # budget + one batch + slack


def test_admission_gate_refuses_by_littles_law_and_admits_without_evidence():
    from dlspark.serving.batcher import AdmissionGate

    gate = AdmissionGate(budget_ms=50)
    for _ in range(100):                           # just after an idle spell: no rate known, all admitted
        gate.enter()
    assert gate.in_flight == 100 and gate.rate() is None
    for _ in range(100):
        gate.leave()
    now = time.monotonic()
    gate._done.clear()
    gate._done.extend(now - 0.1 + i * 0.001 for i in range(100))    # 100 answers in the last 0.1 s: 1000/s
    gate.in_flight = 40
    gate.enter()                                   # 41 ahead / 1000 per s = 41 ms: within 50
    with pytest.raises(QueueFull, match="serve.max_queue_ms") as refused:
        for _ in range(20):
            gate.enter()
    admitted = gate.in_flight                      # refused about 50 ahead: (50 + 1) / ~1000 per s > 50 ms
    assert refused.value.reason == "over_capacity" and 45 <= admitted <= 50
    gate.leave(answered=False)
    assert gate.in_flight == admitted - 1 and len(gate._done) == 100      # a refusal further on is not an answer
    assert AdmissionGate(budget_ms=None).predicted_wait() == 0.0


def test_image_bytes_base64_and_batch_equal_direct_scoring(image_client, pixels):
    want = expected_probs(pixels)
    one = image_client.post("/predict", content=png(pixels[0]), headers={"content-type": "image/png"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["model"], body["version"]) == ("test-images", "1")
    pred = body["predictions"][0]
    assert pred["index"] == int(want[0].argmax()) and pred["label"] == IMAGE_LABELS[pred["index"]]
    assert pred["probability"] == pytest.approx(float(want[0].max()), abs=1e-5)
    assert [t["label"] for t in pred["top_k"]] == [IMAGE_LABELS[i] for i in np.argsort(-want[0])]
    instances = [{"image_b64": base64.b64encode(png(p)).decode()} for p in pixels]
    batch = image_client.post("/predict", json={"instances": instances})
    assert batch.status_code == 200, batch.text
    got = [p["probability"] for p in batch.json()["predictions"]]
    np.testing.assert_allclose(got, want.max(axis=1), atol=1e-5)
    assert [p["index"] for p in batch.json()["predictions"]] == list(want.argmax(axis=1))


def test_image_request_errors(image_client, pixels):
    good = base64.b64encode(png(pixels[0])).decode()
    bad = base64.b64encode(b"definitely not an image").decode()
    r = image_client.post("/predict", json={"instances": [{"image_b64": good}, {"image_b64": bad}]})
    assert r.status_code == 422 and r.json()["reason"] == "not_an_image" and "instance 1" in r.json()["error"]
    r = image_client.post("/predict", json={"text": "a text for an image model"})
    assert r.status_code == 422 and r.json()["reason"] == "wrong_kind"
    r = image_client.post("/predict", content=b"x" * 5000, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "max_payload_bytes=4096" in r.json()["error"]
    r = image_client.post("/predict", content=b'{"instances": [', headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_health_ready_and_metrics(image_client, pixels):
    assert image_client.get("/health").json() == {"status": "ok"}
    ready = image_client.get("/ready").json()
    assert ready["ready"] is True and ready["version"] == "1" and ready["kind"] == "image"
    image_client.post("/predict", content=png(pixels[1]), headers={"content-type": "image/png"})
    image_client.post("/predict", content=b"{", headers={"content-type": "application/json"})
    text = image_client.get("/metrics").text
    assert 'dlspark_serve_requests_total{status="200"}' in text
    assert 'dlspark_serve_requests_total{status="400"}' in text
    assert 'dlspark_serve_errors_total{reason="bad_json"}' in text
    assert "dlspark_serve_request_seconds_bucket" in text and "dlspark_serve_batch_size_count" in text
    assert "dlspark_serve_queue_depth 0.0" in text
    assert 'dlspark_serve_model_version{model="test-images",version="1"} 1.0' in text


class SlowPredictor:
    """Records batch sizes; each forward pass takes ``delay`` seconds and returns uniform probabilities."""

    def __init__(self, delay: float) -> None:
        self.delay, self.sizes, self.lock = delay, [], threading.Lock()

    def predict_images(self, pixels, mean, std):
        with self.lock:
            self.sizes.append(len(pixels))
        time.sleep(self.delay)
        return np.full((len(pixels), len(IMAGE_LABELS)), 1 / len(IMAGE_LABELS), np.float32)


def _concurrent_posts(client, body: bytes, n: int) -> list:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: client.post("/predict", content=body, headers={"content-type": "image/png"}),
                             range(n)))


def test_concurrent_requests_share_a_forward_pass(image_target, pixels):
    fake = SlowPredictor(0.05)
    service = registry_service(image_target, "models:/test-images@champion", predictor=fake)
    service.refresh()
    cfg = ServeConfig(max_batch=8, max_wait_ms=30, queue_size=64, reload_seconds=0)
    with TestClient(create_app(service, cfg)) as client:
        responses = _concurrent_posts(client, png(pixels[0]), 12)
        metrics = client.get("/metrics").text
    assert [r.status_code for r in responses] == [200] * 12
    warm_up, batches = fake.sizes[0], fake.sizes[1:]                  # one pass at load, before any request
    assert warm_up == 1 and sum(batches) == 12 and max(batches) > 1 and len(batches) < 12
    assert f"dlspark_serve_batch_size_count {float(len(batches))}" in metrics


def test_full_queue_answers_503_with_retry_after(image_target, pixels):
    service = registry_service(image_target, "models:/test-images@champion", predictor=SlowPredictor(0.3))
    service.refresh()
    cfg = ServeConfig(max_batch=1, max_wait_ms=0, queue_size=1, reload_seconds=0)
    with TestClient(create_app(service, cfg)) as client:
        responses = _concurrent_posts(client, png(pixels[0]), 6)
        metrics = client.get("/metrics").text
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) == {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and refused.json()["reason"] == "queue_full"
    assert 'dlspark_serve_errors_total{reason="queue_full"}' in metrics


def test_hot_reload_when_champion_moves(tmp_path, pixels):
    target = register_image_model(tmp_path, name="reload-images")
    service = registry_service(target, "models:/reload-images@champion")
    cfg = ServeConfig(reload_seconds=0.2, max_wait_ms=1)
    with TestClient(create_app(service, cfg)) as client:
        _wait_for(lambda: client.get("/ready").json().get("version") == "1")
        register_image_model(tmp_path, name="reload-images")        # version 2; same metric, so not promoted
        assert client.get("/ready").json()["version"] == "1"
        promote(target, "reload-images", 2)
        _wait_for(lambda: client.get("/ready").json().get("version") == "2")
        r = client.post("/predict", content=png(pixels[0]), headers={"content-type": "image/png"})
        metrics = client.get("/metrics").text
    assert r.json()["version"] == "2" and r.json()["predictions"][0]["version"] == "2"
    assert 'dlspark_serve_model_version{model="reload-images",version="2"} 1.0' in metrics
    assert 'version="1"' not in metrics.split("dlspark_serve_model_version")[-1]


def _wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# ---- the text model ----

def test_serving_runs_the_onnx_export_and_names_the_registered_version(tmp_path, pixels):
    from dlspark.export.onnx import export_registered_onnx
    from dlspark.inference.model import download_for_runtime

    target = register_image_model(tmp_path)
    export = export_registered_onnx(target, "models:/test-images@champion", "test-images-onnx")
    service = ModelService(lambda: resolve_model(target, "models:/test-images@champion"),
                           lambda ref: load_served_model(download_for_runtime(target, ref, "onnx"), resize="stretch"))
    assert service.refresh() and not service.refresh()          # the source version is what the alias is compared to
    with TestClient(create_app(service, FAST)) as client:
        ready = client.get("/ready").json()
        assert (ready["version"], ready["runtime"], ready["runtime_model"]) == (
            "1", "onnx", f"models:/test-images-onnx/{export.version}")
        r = client.post("/predict", content=png(pixels[2]), headers={"content-type": "image/png"}).json()
    assert (r["model"], r["version"]) == ("test-images", "1")
    assert r["predictions"][0]["probability"] == pytest.approx(float(expected_probs(pixels[2:3]).max()), abs=1e-5)


def test_text_predictions_equal_batch_scoring_and_empty_text_is_422(tmp_path):
    target = register_text_model(tmp_path, max_length=16)
    service = registry_service(target, "models:/test-sentiment@champion")
    service.refresh()
    texts = ["what a wonderful day", "this is awful @bob http://x.y"]
    model = service.model
    batch = score_record_batch(pa.RecordBatch.from_pydict({"text": pa.array(texts)}), model.spec, model.predictor, model.tokenizer)
    with TestClient(create_app(service, FAST)) as client:
        r = client.post("/predict", json={"instances": [{"text": t} for t in texts]})
        single = client.post("/predict", json={"text": texts[0]})
        empty = client.post("/predict", json={"instances": [{"text": "ok"}, {"text": "   "}]})
        image = client.post("/predict", content=b"\x89PNG", headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [p["label"] for p in got] == batch.column("prediction").to_pylist()
    np.testing.assert_allclose([p["probability"] for p in got], batch.column("probability").to_pylist(), atol=1e-5)
    assert single.json()["predictions"][0]["label"] == got[0]["label"]
    assert empty.status_code == 422 and empty.json()["reason"] == "empty_text" and "instance 1" in empty.json()["error"]
    assert image.status_code == 422 and image.json()["reason"] == "wrong_kind"
