"""Prometheus metrics of one serving app, in a registry of its own (several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """Request counts by status, latency, batch sizes, errors by reason, queue depth and the served version."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dlspark_serve_requests", "POST /predict requests by HTTP status", ["status"], registry=r)
        self.latency = Histogram("dlspark_serve_request_seconds", "POST /predict latency, body read to response",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("dlspark_serve_batch_size", "instances per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("dlspark_serve_batch_seconds", "forward pass time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("dlspark_serve_errors", "failed requests by reason", ["reason"], registry=r)
        self.queue_depth = Gauge("dlspark_serve_queue_depth", "instances waiting for a batch", registry=r)
        self.model_version = Gauge("dlspark_serve_model_version", "1 for the model version being served",
                                   ["model", "version"], registry=r)
        self.reloads = Counter("dlspark_serve_reloads", "alias checks that loaded another version, by outcome",
                               ["outcome"], registry=r)
        # per version (arm = champion | challenger): what a rollout is judged on
        self.version_requests = Counter("dlspark_serve_version_requests", "scored requests per version, by outcome "
                                        "(ok | error)", ["arm", "version", "outcome"], registry=r)
        self.version_latency = Histogram("dlspark_serve_version_request_seconds", "scoring latency per version "
                                         "(decode + queue + forward pass)", ["arm", "version"], buckets=LATENCY_BUCKETS,
                                         registry=r)
        self.version_labels = Counter("dlspark_serve_version_labels", "POST /feedback labels per version, by whether "
                                      "the version's answer was right", ["arm", "version", "correct"], registry=r)
        self.challenger_share = Gauge("dlspark_serve_rollout_challenger_share", "share of requests the challenger "
                                      "answers now (0 in shadow mode)", registry=r)
        self.rollout_decisions = Counter("dlspark_serve_rollout_decisions", "rollout decisions by action",
                                         ["action"], registry=r)
        self.similar_requests = Counter("dlspark_serve_similar_requests", "GET/POST /similar requests by HTTP status",
                                        ["method", "status"], registry=r)
        self.similar_latency = Histogram("dlspark_serve_similar_seconds", "GET/POST /similar latency (embedding and "
                                         "index search), body read to response", ["method"], buckets=LATENCY_BUCKETS,
                                         registry=r)
        self.shadow = Counter("dlspark_serve_shadow_requests", "shadow copies scored by the challenger, by outcome "
                              "(agree | disagree | failed | dropped)", ["outcome"], registry=r)

    def observe_request(self, status: int, seconds: float, reason: str | None = None) -> None:
        """Count one request (and its error reason, if it failed)."""
        self.requests.labels(status=str(status)).inc()
        self.latency.observe(seconds)
        if reason is not None:
            self.errors.labels(reason=reason).inc()

    def observe_similar(self, method: str, status: int, seconds: float, reason: str | None = None) -> None:
        self.similar_requests.labels(method=method, status=str(status)).inc()
        self.similar_latency.labels(method=method).observe(seconds)
        if reason is not None:
            self.errors.labels(reason=reason).inc()

    def observe_version(self, arm: str, version: str | None, seconds: float, ok: bool) -> None:
        """One request scored (or failed server-side) by ``arm``'s version."""
        self.version_requests.labels(arm=arm, version=version or "", outcome="ok" if ok else "error").inc()
        if ok:
            self.version_latency.labels(arm=arm, version=version or "").observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def set_model(self, model: str, version: str | None) -> None:
        """Make ``model``/``version`` the only served version reported."""
        self.model_version.clear()
        self.model_version.labels(model=model, version=version or "").set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
