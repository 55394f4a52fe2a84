"""The protocols users' clients speak, each with a real HTTP client against a running uvicorn server:
curl -F (multipart), KServe / Open Inference Protocol v2, TF-Serving REST."""
from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from dlspark.serving import create_app
from tests.inference_models import IMAGE_LABELS
from tests.test_serving import FAST, expected_probs, png, registry_service


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.inference_models import register_image_model

    target = register_image_model(tmp_path_factory.mktemp("protocols"), name="proto-images")
    service = registry_service(target, "models:/proto-images@champion")
    service.refresh()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(service, FAST), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def sample():
    pixels = np.random.default_rng(11).integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    return pixels, [IMAGE_LABELS[i] for i in expected_probs(pixels).argmax(axis=1)]


def test_curl_multipart_upload(server, sample, tmp_path):
    pixels, truth = sample
    files = []
    for i, p in enumerate(pixels[:2]):
        files += ["-F", f"file{i}=@{tmp_path / f'x{i}.png'};type=image/png"]
        (tmp_path / f"x{i}.png").write_bytes(png(p))
    out = subprocess.run(["curl", "-s", "-w", "\\n%{http_code}", *files, f"{server}/predict"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    body, _, code = out.rpartition("\n")
    assert code == "200", body
    assert [p["label"] for p in json.loads(body)["predictions"]] == truth[:2]
    empty = httpx.post(f"{server}/predict", data={"other": "x"}, files={"ignored": (None, "y")})
    assert empty.status_code == 422 and "no file part" in empty.json()["error"]


def test_open_inference_protocol_v2(server, sample):
    pixels, truth = sample
    assert httpx.get(f"{server}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server}/v2/models/proto-images/ready").json()["ready"] is True
    meta = httpx.get(f"{server}/v2/models/proto-images").json()
    assert meta["name"] == "proto-images" and meta["versions"] == ["1"] and meta["inputs"][1]["shape"] == [-1, 8, 8, 1]
    files = [base64.b64encode(png(p)).decode() for p in pixels]
    r = httpx.post(f"{server}/v2/models/proto-images/infer", json={
        "id": "req-7", "inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": files}]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("proto-images", "1", "req-7")
    assert {o["name"]: o["data"] for o in doc["outputs"]}["label"] == truth
    raw = httpx.post(f"{server}/v2/models/proto-images/infer", json={
        "inputs": [{"name": "pixels", "shape": [3, 8, 8, 1], "datatype": "UINT8", "data": pixels.reshape(-1).tolist()}],
        "outputs": [{"name": "label"}]})
    assert [o["name"] for o in raw.json()["outputs"]] == ["label"] and raw.json()["outputs"][0]["data"] == truth
    assert httpx.post(f"{server}/v2/models/other/infer", json={}).status_code == 404
    bad = httpx.post(f"{server}/v2/models/proto-images/infer", json={
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]})
    assert bad.status_code == 400 and "datatype 'FP64'" in bad.json()["error"]


def test_tf_serving_rest(server, sample):
    pixels, truth = sample
    status = httpx.get(f"{server}/v1/models/proto-images").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    rows = [{"b64": base64.b64encode(png(pixels[0])).decode()}, pixels[1].tolist(), {"pixels": pixels[2][:, :, None].tolist()}]
    r = httpx.post(f"{server}/v1/models/proto-images:predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == truth
    wrong = httpx.post(f"{server}/v1/models/proto-images:predict", json={"instances": ["a text"]})
    assert wrong.status_code == 422 and "wrong_kind" not in wrong.json() and "text" in wrong.json()["error"]
