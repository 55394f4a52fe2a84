"""Roll-outs on the running app: a worse challenger is rolled back on its own, a good one is promoted through the
canary steps, shadow answers never reach a client, and every decision lands in MLflow, the table and /metrics."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from dlspark.config.schema import RolloutConfig, ServeConfig
from dlspark.serving import create_app
from dlspark.serving.rollout_record import RolloutRecorder
from tests.inference_models import IMAGE_LABELS, register_image_model
from tests.test_serving import _wait_for, expected_probs, png, registry_service

SHIFTED = IMAGE_LABELS[1:] + IMAGE_LABELS[:1]          # same weights, every class named wrongly


class BrokenPredictor:
    def predict_images(self, pixels, mean, std):
        raise RuntimeError("this challenger cannot score")


def images(n: int, seed: int = 7) -> tuple[list[bytes], list[str]]:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    truth = [IMAGE_LABELS[i] for i in expected_probs(pixels).argmax(axis=1)]
    return [png(p) for p in pixels], truth


def rollout_app(tmp_path, name: str, challenger_predictor=None, **rollout):
    target = register_image_model(tmp_path, name=name)
    register_image_model(tmp_path, name=name, labels=rollout.pop("challenger_labels", IMAGE_LABELS))  # v2: candidate
    cfg = ServeConfig(max_batch=8, max_wait_ms=1, queue_size=64, reload_seconds=rollout.pop("reload_seconds", 0),
                      rollout=RolloutConfig(**{"min_requests": 10, "min_labelled": 10, "table_seconds": 0,
                                               "max_p95_ratio": 10.0, **rollout}))   # latency rule: test_rollout.py
    champion = registry_service(target, f"models:/{name}@champion")
    challenger = registry_service(target, f"models:/{name}@candidate", predictor=challenger_predictor)
    champion.refresh()
    challenger.refresh()
    recorder = RolloutRecorder(target, name, str(tmp_path / "rollout-table"))
    return target, create_app(champion, cfg, challenger=challenger, recorder=recorder)


def post(client, body: bytes, key: str | None = None):
    headers = {"content-type": "image/png", **({"x-rollout-key": key} if key else {})}
    return client.post("/predict", content=body, headers=headers)


def version_tags(target, name: str, version: str) -> dict:
    return dict(target.client().get_model_version(name, version).tags)


def test_a_worse_challenger_is_rolled_back_on_its_own(tmp_path):
    target, app = rollout_app(tmp_path, "ab-images", mode="ab", split=0.5, challenger_labels=SHIFTED)
    bodies, truth = images(80)
    answered_by = []
    with TestClient(app) as client:
        for i, (body, label) in enumerate(zip(bodies, truth)):
            r = post(client, body, key=f"user-{i}")
            assert r.status_code == 200, r.text
            answered_by.append(r.json()["version"])
            fb = client.post("/feedback", json={"request_id": r.json()["request_id"], "label": label})
            assert fb.status_code == 200, fb.text
        state = client.get("/rollout").json()
        _wait_for(lambda: version_tags(target, "ab-images", "2").get("dlspark.rollout.status") == "rolled_back")
        after = [post(client, b, key=f"user-{i}").json()["version"] for i, b in enumerate(bodies[:20])]
        metrics = client.get("/metrics").text
        again = client.post("/feedback", json={"request_id": "never-seen", "label": "circle"})
    assert "2" in answered_by[:30] and state["status"] == "rolled_back" and state["challenger_share"] == 0.0
    rollback = state["decisions"][-1]
    assert rollback["action"] == "rollback" and "live accuracy 0.000 vs champion 1.000" in rollback["reason"]
    assert state["versions"]["champion"]["accuracy"] == 1.0 and state["versions"]["challenger"]["accuracy"] == 0.0
    assert after == ["1"] * 20                                         # traffic is back on the champion
    tags = version_tags(target, "ab-images", "2")
    assert tags["dlspark.rollout.decision"] == "rollback" and "live accuracy" in tags["dlspark.rollout.reason"]
    assert str(target.client().get_model_version_by_alias("ab-images", "champion").version) == "1"   # the alias stayed
    assert 'dlspark_serve_rollout_decisions_total{action="rollback"} 1.0' in metrics
    assert 'dlspark_serve_version_labels_total{arm="challenger",correct="false",version="2"}' in metrics
    assert again.status_code == 404 and "feedback_window" in again.json()["error"]
    rows = pq.read_table(tmp_path / "rollout-table").to_pylist()
    assert {(r["event"], r["arm"], r["version"]) for r in rows} == {("rollback", "champion", "1"), ("rollback", "challenger", "2")}

    _, restarted = rollout_app(tmp_path / "fresh", "ab-images-2", mode="ab", split=0.5)   # unrelated model: runs
    assert restarted.state.scorer.rollout.status == "running"
    recorder = RolloutRecorder(target, "ab-images", None)
    assert recorder.previous_status("2") == "rolled_back"               # a restart would not route to version 2


def test_a_broken_challenger_is_rolled_back_on_its_error_rate(tmp_path):
    _, app = rollout_app(tmp_path, "err-images", challenger_predictor=BrokenPredictor(), mode="ab", split=0.5)
    bodies, _ = images(60)
    with TestClient(app) as client:
        codes = [post(client, b).status_code for b in bodies]
        state = client.get("/rollout").json()
        tail = [post(client, b).status_code for b in bodies[:20]]
    assert 500 in codes and state["status"] == "rolled_back"
    assert "error rate 100.00% vs champion 0.00%" in state["decisions"][-1]["reason"]
    assert state["versions"]["challenger"]["errors"] == 10                # judged at min_requests, then no more traffic
    assert tail == [200] * 20


def test_a_good_challenger_is_promoted_through_the_canary_steps(tmp_path):
    target, app = rollout_app(tmp_path, "canary-images", mode="canary", steps=(0.25, 0.5, 1.0), step_requests=8,
                              min_requests=8, auto_promote=True, reload_seconds=0.2)
    bodies, truth = images(200, seed=3)
    with TestClient(app) as client:
        for body, label in zip(bodies, truth):
            r = post(client, body)
            client.post("/feedback", json={"request_id": r.json()["request_id"], "label": label})
            if client.get("/rollout").json()["status"] == "promoted":
                break
        state = client.get("/rollout").json()
        assert state["status"] == "promoted", state["decisions"]
        _wait_for(lambda: str(target.client().get_model_version_by_alias("canary-images", "champion").version) == "2")
        _wait_for(lambda: client.get("/ready").json()["version"] == "2")          # the champion reloaded
        _wait_for(lambda: client.get("/rollout").json()["mode"] == "none")      # one version left: no split
    steps = [(d["action"], d["share_before"], d["share_after"]) for d in state["decisions"]]
    assert steps == [("step", 0.25, 0.5), ("step", 0.5, 1.0), ("promote", 1.0, 1.0)]
    assert version_tags(target, "canary-images", "2")["dlspark.rollout.status"] == "promoted"
    rows = pq.read_table(tmp_path / "rollout-table").to_pylist()
    events = sorted((r["decision_seq"], r["event"]) for r in rows if r["arm"] == "challenger")
    assert events == [(1, "step"), (2, "step"), (3, "promote")]


def test_shadow_answers_never_reach_a_client(tmp_path, caplog):
    _, app = rollout_app(tmp_path, "shadow-images", mode="shadow", challenger_labels=SHIFTED, min_labelled=1000)
    bodies, truth = images(30, seed=5)
    with caplog.at_level(logging.INFO, logger="dlspark.serving.shadow"), TestClient(app) as client:
        responses = [post(client, b, key=f"k{i}").json() for i, b in enumerate(bodies)]
        _wait_for(lambda: client.get("/rollout").json()["versions"]["challenger"]["requests"] >= 30)
        for r, label in zip(responses, truth):
            client.post("/feedback", json={"request_id": r["request_id"], "label": label})
        state = client.get("/rollout").json()
        metrics = client.get("/metrics").text
    assert {r["version"] for r in responses} == {"1"}
    assert [r["predictions"][0]["label"] for r in responses] == truth
    assert state["status"] == "running" and state["challenger_share"] == 0.0
    assert state["versions"]["challenger"]["accuracy"] == 0.0 and state["versions"]["champion"]["accuracy"] == 1.0
    assert 'dlspark_serve_shadow_requests_total{outcome="disagree"} 30.0' in metrics
    shadow_lines = [r.getMessage() for r in caplog.records if r.name == "dlspark.serving.shadow"]
    assert len(shadow_lines) == 30 and all('"challenger": "2"' in line for line in shadow_lines)


@pytest.mark.parametrize("body,status", [({"label": "circle"}, 422), ({"request_id": "x", "label": 3}, 422),
                                          ({"request_id": "x", "label": "a", "labels": ["a"]}, 422)])
def test_feedback_rejects_malformed_bodies(tmp_path, body, status):
    _, app = rollout_app(tmp_path, "fb-images", mode="ab", split=0.0)
    with TestClient(app) as client:
        r = client.post("/feedback", json=body)
    assert r.status_code == status and "request_id" in r.json()["error"] + str(body) and r.json()["reason"] == "bad_feedback"
