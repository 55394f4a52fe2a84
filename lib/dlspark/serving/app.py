"""The FastAPI app: our own endpoints, Open Inference Protocol v2, TF-Serving REST, feedback and the rollout.

Endpoints:

* ``POST /predict`` (image bytes, text, JSON instances, ``multipart/form-data``), ``GET /health``,
  ``GET /ready``, ``GET /metrics`` (Prometheus);
* KServe / OIP v2: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2/models/{name}``,
  ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``;
* TF-Serving REST: ``GET /v1/models/{name}``, ``POST /v1/models/{name}:predict``;
* ``POST /feedback`` (``{"request_id": ..., "label": ...}``): the true label of an answered request;
  ``GET /rollout``: the champion/challenger split and its live statistics;
* ``GET /similar?id=KEY&k=5`` (the indexed rows nearest to row KEY) and ``POST /similar?k=5`` (nearest to each
  posted image or text, bodies as for ``/predict``), from the embeddings index (:mod:`dlspark.serving.similar`).

``create_app(service, cfg, challenger=..., recorder=...)`` wires one
:class:`~dlspark.serving.service.ModelService` per version (the champion, and a challenger when
``serve.rollout.mode`` is not ``none``) to a :class:`~dlspark.serving.batcher.MicroBatcher` each. Every
protocol goes through :meth:`Scorer.score`: route (:class:`~dlspark.serving.rollout.Rollout`), decode, batch,
observe. Its lifespan starts the batchers and one background task per version that loads the model and then
checks its alias every ``reload_seconds``; a swap of either version starts a fresh rollout.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from dlspark.config.schema import ServeConfig
from dlspark.embeddings.index_store import Neighbour
from dlspark.serving import protocols
from dlspark.serving.batcher import AdmissionGate, MicroBatcher, QueueFull
from dlspark.serving.metrics import ServingMetrics
from dlspark.serving.payload import Instance, PayloadError, parse_payload
from dlspark.serving.rollout import CHALLENGER, CHAMPION, Arm, Decision, DuplicateFeedback, Rollout, UnknownRequest
from dlspark.serving.rollout_record import RolloutRecorder
from dlspark.serving.service import InstanceError, ModelNotReady, ModelService, ServedModel, prepare, run_batch
from dlspark.serving.similar import SimilarModel, embed_on, keep_index_fresh

log = logging.getLogger(__name__)
shadow_log = logging.getLogger("dlspark.serving.shadow")

LOAD_RETRY_SECONDS = 5.0
INLINE_DECODE_BYTES = 64 * 1024          # smaller bodies are decoded on the event loop (a thread hop costs more)


@dataclass(frozen=True)
class ServingArm:
    """One served version: its model service and its own micro-batcher."""

    name: Arm
    service: ModelService
    batcher: MicroBatcher


@dataclass(frozen=True)
class Scored:
    arm: ServingArm
    request_id: str
    predictions: list[dict[str, Any]]


class RequestFailed(Exception):
    """A request that ends with ``status``; ``reason`` names it for metrics and clients."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.retry_after = status, reason, retry_after


class Scorer:
    """Routes, scores and observes requests for every protocol; owns the current :class:`Rollout`."""

    def __init__(self, arms: dict[Arm, ServingArm], cfg: ServeConfig, metrics: ServingMetrics,
                 recorder: RolloutRecorder | None) -> None:
        self.arms, self.cfg, self.metrics, self.recorder = arms, cfg, metrics, recorder
        self.gate = AdmissionGate(cfg.max_queue_ms)     # the whole server-side wait (event loop, decode, batch)
        self.rollout = Rollout(replace(cfg.rollout, mode="none"), None, None)
        self._tasks: set[asyncio.Task] = set()
        self._records = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlspark-rollout-record")  # in order

    @property
    def champion(self) -> ModelService:
        return self.arms[CHAMPION].service

    # ---- the rollout's life ----

    def rebuild_rollout(self) -> None:
        """A fresh rollout for the versions loaded now (called after either one swapped)."""
        champion, challenger = self.champion, self.arms.get(CHALLENGER)
        if not champion.ready:
            return
        mode = self.cfg.rollout.mode
        if challenger is None or not challenger.service.ready or \
                challenger.service.model.bundle.ref.uri == champion.model.bundle.ref.uri:
            rollout = Rollout(replace(self.cfg.rollout, mode="none"), champion.model.version, None)
        else:
            version = challenger.service.model.version
            status = self.recorder.previous_status(version) if self.recorder is not None else "running"
            rollout = Rollout(self.cfg.rollout, champion.model.version, version, status=status)
            log.info("rollout %s: champion version %s, challenger version %s (%s), challenger share %.0f%%", mode,
                     champion.model.version, version, status, rollout.share * 100)
        self.rollout = rollout
        self.metrics.challenger_share.set(rollout.share)

    def on_decision(self, rollout: Rollout, decision: Decision | None) -> None:
        if decision is None:
            return
        self.metrics.rollout_decisions.labels(action=decision.action).inc()
        self.metrics.challenger_share.set(rollout.share)
        if self.recorder is not None:
            self._spawn(asyncio.get_running_loop().run_in_executor(self._records, self._record, rollout, decision))
        else:
            log.info("rollout %s: %s", decision.action, decision.reason)

    def _record(self, rollout: Rollout, decision: Decision) -> None:
        try:
            assert self.recorder is not None
            self.recorder.record(rollout, decision)
        except Exception:  # noqa: BLE001 - the decision already took effect in this process; keep serving
            log.exception("could not record the rollout decision %s (it still holds in this server)", decision.action)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the shadow copies and decision records still running."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- scoring ----

    async def score(self, instances: Sequence[Instance], key: str | None, request_id: str | None) -> Scored:
        """The predictions for ``instances`` from the version the rollout picks (raises :class:`RequestFailed`)."""
        if len(instances) > self.cfg.queue_size:
            raise RequestFailed(413, "too_many_instances", f"{len(instances)} instances in one request; at most "
                                                           f"serve.queue_size={self.cfg.queue_size}: split the request")
        rollout, request_id = self.rollout, request_id or uuid.uuid4().hex
        route = rollout.route(key)
        arm = self.arms.get(route.answer) or self.arms[CHAMPION]
        if not arm.service.ready:
            arm = self.arms[CHAMPION]
        try:
            self.gate.enter()                      # before decoding: a refusal past capacity costs nothing
        except QueueFull as exc:
            raise RequestFailed(503, exc.reason, str(exc), retry_after=exc.retry_after) from exc
        try:
            arm.batcher.admit(len(instances))
        except QueueFull as exc:
            self.gate.leave(answered=False)
            raise RequestFailed(503, exc.reason, str(exc), retry_after=exc.retry_after) from exc
        try:
            predictions = await self._score_on(arm, instances, rollout)
        finally:
            self.gate.leave()
        rollout.record_answer(request_id, arm.name, [p["label"] for p in predictions])
        if route.shadow and CHALLENGER in self.arms:
            self._shadow(instances, request_id, predictions, rollout)
        return Scored(arm, request_id, predictions)

    async def _score_on(self, arm: ServingArm, instances: Sequence[Instance], rollout: Rollout) -> list[dict[str, Any]]:
        start = time.perf_counter()
        try:
            values = await prepare_values(arm.service.model, instances)
            predictions = await arm.batcher.submit(values)
        except (PayloadError, InstanceError) as exc:
            raise RequestFailed(exc.status, exc.reason, str(exc)) from exc
        except ModelNotReady as exc:
            raise RequestFailed(503, "not_ready", str(exc), retry_after=5) from exc
        except QueueFull as exc:
            raise RequestFailed(503, exc.reason, str(exc), retry_after=exc.retry_after) from exc
        except Exception as exc:  # noqa: BLE001 - the request boundary: log it, count it against the version
            log.exception("scoring on the %s failed", arm.name)
            self._observe(arm, rollout, time.perf_counter() - start, ok=False)
            raise RequestFailed(500, "internal", f"{type(exc).__name__}: {exc}") from exc
        self._observe(arm, rollout, time.perf_counter() - start, ok=True)
        return predictions

    def _observe(self, arm: ServingArm, rollout: Rollout, seconds: float, ok: bool) -> None:
        version = rollout.stats[arm.name].version
        self.metrics.observe_version(arm.name, version, seconds, ok)
        self.on_decision(rollout, rollout.observe(arm.name, seconds, ok))

    def _shadow(self, instances: Sequence[Instance], request_id: str, answered: list[dict[str, Any]],
                rollout: Rollout) -> None:
        arm = self.arms[CHALLENGER]
        if not arm.service.ready or arm.batcher.depth + len(instances) > arm.batcher.queue_size // 2:
            self.metrics.shadow.labels(outcome="dropped").inc()      # never let the shadow slow the champion
            return

        async def run() -> None:
            try:
                shadow = await self._score_on(arm, instances, rollout)
            except RequestFailed as exc:
                self.metrics.shadow.labels(outcome="failed").inc()
                shadow_log.info(json.dumps({"request_id": request_id, "error": exc.reason}))
                return
            labels = [p["label"] for p in shadow]
            rollout.record_answer(request_id, CHALLENGER, labels)
            agree = labels == [p["label"] for p in answered]
            self.metrics.shadow.labels(outcome="agree" if agree else "disagree").inc()
            shadow_log.info(json.dumps({"request_id": request_id, "champion": answered[0]["version"],
                                        "challenger": shadow[0]["version"], "champion_labels": [p["label"] for p in answered],
                                        "challenger_labels": labels}))

        self._spawn(run())

    def feedback(self, request_id: str, labels: Sequence[str]) -> dict[str, Any]:
        rollout = self.rollout
        try:
            result, decision = rollout.feedback(request_id, labels)
        except UnknownRequest as exc:
            raise RequestFailed(404, "unknown_request", str(exc.args[0])) from exc
        except DuplicateFeedback as exc:
            raise RequestFailed(409, "duplicate_feedback", str(exc)) from exc
        except ValueError as exc:
            raise RequestFailed(422, "bad_feedback", str(exc)) from exc
        for arm, right in result.correct.items():
            version = rollout.stats[arm].version or ""       # type: ignore[index]
            self.metrics.version_labels.labels(arm=arm, version=version, correct="true").inc(right)
            self.metrics.version_labels.labels(arm=arm, version=version, correct="false").inc(len(labels) - right)
        self.on_decision(rollout, decision)
        return {"request_id": request_id, "instances": len(labels), "correct": result.correct}


def create_app(service: ModelService, cfg: ServeConfig, *, challenger: ModelService | None = None,
               recorder: RolloutRecorder | None = None, similar: ModelService | None = None) -> FastAPI:
    """The serving app for ``service`` (and ``challenger`` when ``cfg.rollout.mode`` is not ``none``; ``similar``:
    the :class:`~dlspark.serving.similar.SimilarModel` service behind ``/similar``, None = 404 there)."""
    metrics = ServingMetrics()
    services: dict[Arm, ModelService] = {CHAMPION: service, **({CHALLENGER: challenger} if challenger is not None else {})}

    def batcher(svc: ModelService) -> MicroBatcher:
        return MicroBatcher(partial(_run_on, svc), max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                            queue_size=cfg.queue_size, max_queue_ms=cfg.max_queue_ms, on_batch=metrics.observe_batch)

    arms: dict[Arm, ServingArm] = {name: ServingArm(name, svc, batcher(svc)) for name, svc in services.items()}
    # /similar batches what queued while the previous pass ran and waits for nothing more: one request alone
    # goes at once, and under load the batches fill by themselves
    similar_batcher = (MicroBatcher(partial(embed_on, similar), max_batch=cfg.max_batch, max_wait_ms=0,
                                    queue_size=cfg.queue_size, max_queue_ms=cfg.max_queue_ms)
                       if similar is not None else None)
    scorer = Scorer(arms, cfg, metrics, recorder)
    metrics.queue_depth.set_function(lambda: arms[CHAMPION].batcher.depth)
    if service.ready:
        metrics.set_model(service.model.name, service.model.version)
    if service.ready and (challenger is None or challenger.ready):
        scorer.rebuild_rollout()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        freeze_heap()
        for batch in (*(arm.batcher for arm in arms.values()), similar_batcher):
            if batch is not None:
                await batch.start()
        tasks = [asyncio.create_task(keep_model_fresh(arm.service, cfg.reload_seconds, metrics, scorer, arm.name),
                                     name=f"dlspark-reload-{arm.name}") for arm in arms.values()]
        if similar is not None:
            tasks.append(asyncio.create_task(keep_index_fresh(similar, cfg.reload_seconds), name="dlspark-reload-similar"))
        if recorder is not None and cfg.rollout.table_seconds > 0 and challenger is not None:
            tasks.append(asyncio.create_task(write_rollout_rows(scorer, recorder, cfg.rollout.table_seconds)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await scorer.drain()
            for batch in (*(arm.batcher for arm in arms.values()), similar_batcher):
                if batch is not None:
                    await batch.stop()

    app = FastAPI(title="dlspark model server", lifespan=lifespan)
    app.state.scorer, app.state.metrics = scorer, metrics
    app.state.service, app.state.batcher = service, arms[CHAMPION].batcher

    def respond(kind: str, handler: Callable[[Request], Awaitable[tuple[dict[str, Any], dict[str, str]]]],
                error_body: Callable[[RequestFailed], dict[str, Any]],
                observe: Callable[..., None] = metrics.observe_request) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            start = time.perf_counter()
            try:
                body, headers = await handler(request)
                status, reason = 200, None
            except RequestFailed as exc:
                status, reason, body = exc.status, exc.reason, error_body(exc)
                headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
            observe(status, time.perf_counter() - start, reason)
            return JSONResponse(body, status_code=status, headers=headers)
        endpoint.__name__ = kind
        return endpoint

    def ours(exc: RequestFailed) -> dict[str, Any]:
        return {"error": str(exc), "reason": exc.reason}

    def theirs(exc: RequestFailed) -> dict[str, Any]:       # KServe and TF-Serving answer {"error": message}
        return {"error": str(exc)}

    def served_name(name: str) -> None:
        model = _model_or_fail(service)
        if name != model.name:
            raise RequestFailed(404, "unknown_model", f"model {name!r} is not served here; this server serves {model.name!r}")

    async def scored(request: Request, instances: list[Instance], request_id: str | None = None) -> Scored:
        return await scorer.score(instances, request.headers.get(cfg.rollout.key_header),
                                  request_id or request.headers.get("x-request-id"))

    # ---- our own protocol ----

    async def predict(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        instances = _parse(parse_payload, await read_body(request, cfg.max_payload_bytes), request.headers.get("content-type"))
        result = await scored(request, instances)
        first = result.predictions[0]
        return ({"model": first["model"], "version": first["version"], "request_id": result.request_id,
                 "predictions": result.predictions}, {"X-Request-Id": result.request_id})

    async def feedback(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        doc = _parse(json.loads, await read_body(request, cfg.max_payload_bytes))
        if not isinstance(doc, dict) or not isinstance(doc.get("request_id"), str) or \
                ("label" in doc) == ("labels" in doc):
            raise RequestFailed(422, "bad_feedback", 'send {"request_id": "<from the prediction>", "label": "<class>"} '
                                                     '(or "labels": [...] for a request of several instances)')
        labels = doc["labels"] if "labels" in doc else [doc["label"]]
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise RequestFailed(422, "bad_feedback", "labels are class names (strings), as the predictions name them")
        return scorer.feedback(doc["request_id"], labels), {}

    app.post("/predict")(respond("predict", predict, ours))
    app.post("/feedback")(respond("feedback", feedback, ours))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"ready": False, "detail": "model loading"}, status_code=503)
        model = service.model
        return JSONResponse({"ready": True, "model": model.name, "version": model.version, "kind": model.kind,
                             "uri": model.bundle.source_ref.uri, "requested": model.bundle.ref.requested,
                             "runtime": model.bundle.runtime, "runtime_model": model.bundle.ref.uri,
                             "runtime_reason": model.bundle.runtime_reason})

    @app.get("/rollout")
    async def rollout() -> dict[str, Any]:
        return scorer.rollout.snapshot()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    # ---- nearest rows from the embeddings index ----

    def similar_model() -> SimilarModel:
        if similar is None:
            raise RequestFailed(404, "similar_off", "/similar is off on this server (serve.similar.enabled: false)")
        try:
            return similar.model  # type: ignore[return-value]  # the /similar service holds SimilarModels
        except ModelNotReady as exc:
            raise RequestFailed(503, "no_index", "no embeddings index is loaded yet: run jobs/embed.py for the served "
                                                 "model version (GET /similar answers once it exists)", retry_after=30) from exc

    def neighbours_k(request: Request) -> int:
        raw = request.query_params.get("k", str(cfg.similar.k))
        if not raw.isdigit() or not 1 <= int(raw) <= cfg.similar.max_k:
            raise RequestFailed(422, "bad_k", f"k={raw!r}: ask for 1 to serve.similar.max_k={cfg.similar.max_k} neighbours")
        return int(raw)

    def answer(model: SimilarModel, **fields: Any) -> dict[str, Any]:
        return {"model": model.name, "version": model.version, "indexed": len(model.index), **fields}

    async def similar_get(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        key, k = request.query_params.get("id"), neighbours_k(request)
        model = similar_model()
        if not key:
            raise RequestFailed(422, "no_id", "GET /similar?id=<row key>&k=5 (sha256 or record_id, as the embeddings "
                                              "table has it), or POST an image / text to /similar")
        if key not in model.index.positions:
            raise RequestFailed(404, "unknown_id", f"row {key!r} is not in the index of {model.name} version "
                                                   f"{model.version} ({len(model.index)} rows)")
        hits = model.by_key(key, k, cfg.similar.ef_search)
        return answer(model, id=key, neighbours=[_neighbour(h) for h in hits]), {}

    async def similar_post(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        k = neighbours_k(request)
        model = similar_model()
        assert similar_batcher is not None
        instances = _parse(parse_payload, await read_body(request, cfg.max_payload_bytes), request.headers.get("content-type"))
        if len(instances) > cfg.max_batch:
            raise RequestFailed(413, "too_many_instances", f"{len(instances)} instances; /similar takes at most "
                                                           f"serve.max_batch={cfg.max_batch} a request")
        try:
            similar_batcher.admit(len(instances))           # before decoding: a refusal past capacity costs nothing
            values = await prepare_values(model.served, instances)
            embedded = await similar_batcher.submit(values)  # one forward pass with other requests' instances
        except InstanceError as exc:
            raise RequestFailed(exc.status, exc.reason, str(exc)) from exc
        except QueueFull as exc:
            raise RequestFailed(503, exc.reason, str(exc), retry_after=exc.retry_after) from exc
        found = [by.nearest(vector, k, cfg.similar.ef_search) for vector, by in embedded]
        return answer(embedded[0][1], results=[{"neighbours": [_neighbour(h) for h in hits]} for hits in found]), {}

    app.get("/similar")(respond("similar_get", similar_get, ours, partial(metrics.observe_similar, "GET")))
    app.post("/similar")(respond("similar_post", similar_post, ours, partial(metrics.observe_similar, "POST")))

    # ---- KServe / Open Inference Protocol v2 ----

    @app.get("/v2/health/live")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str) -> JSONResponse:
        ok = service.ready and service.model.name == name
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503 if not service.ready else 404)

    async def v2_metadata(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        served_name(request.path_params["name"])
        model = service.model
        return protocols.v2_metadata(model.name, model.version, model.kind, model.bundle.flavor,
                                     model.bundle.preprocessing.get("image_shape")), {}

    async def v2_infer(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        served_name(request.path_params["name"])
        raw = await read_body(request, cfg.max_payload_bytes)
        instances, request_id, outputs = _parse(protocols.parse_v2_infer, raw, service.model.kind)
        result = await scored(request, instances, request_id)
        first = result.predictions[0]
        return protocols.v2_response(first["model"], first["version"], result.request_id, result.predictions,
                                     outputs), {"X-Request-Id": result.request_id}

    app.get("/v2/models/{name}")(respond("v2_metadata", v2_metadata, theirs))
    app.post("/v2/models/{name}/infer")(respond("v2_infer", v2_infer, theirs))

    # ---- TF-Serving REST ----

    async def tf_status(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        served_name(request.path_params["name"])
        return protocols.tf_status(service.model.version), {}

    async def tf_predict(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        served_name(request.path_params["name"])
        raw = await read_body(request, cfg.max_payload_bytes)
        result = await scored(request, _parse(protocols.parse_tf_predict, raw, service.model.kind))
        return protocols.tf_response(result.predictions), {"X-Request-Id": result.request_id}

    app.get("/v1/models/{name}")(respond("tf_status", tf_status, theirs))
    app.post("/v1/models/{name}:predict")(respond("tf_predict", tf_predict, theirs))
    return app


async def prepare_values(model: ServedModel, instances: Sequence[Instance]) -> list:
    """:func:`prepare` on the event loop for small bodies, on a thread for large ones (a thread hop costs more than
    decoding a few KB)."""
    if sum(len(i.image or b"") for i in instances) <= INLINE_DECODE_BYTES:
        return prepare(model, instances)
    return await asyncio.to_thread(prepare, model, instances)


def _neighbour(hit: Neighbour) -> dict[str, Any]:
    return {"id": hit.key, "label": hit.label, "similarity": round(hit.similarity, 6)}


def _run_on(service: ModelService, values: list) -> list:
    """One forward pass on the model ``service`` holds now (a reload may have swapped it since decoding)."""
    return run_batch(service.model, values)


def _parse(parser: Callable[..., Any], *args: Any) -> Any:
    """``parser(*args)`` with its :class:`PayloadError` (or a JSON error) turned into :class:`RequestFailed`."""
    try:
        return parser(*args)
    except PayloadError as exc:
        raise RequestFailed(exc.status, exc.reason, str(exc)) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestFailed(400, "bad_json", f"the body is not valid JSON ({exc})") from exc


def _model_or_fail(service: ModelService) -> Any:
    try:
        return service.model
    except ModelNotReady as exc:
        raise RequestFailed(503, "not_ready", str(exc), retry_after=5) from exc


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared Content-Length) exceeds ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestFailed(413, "too_large", f"body of {declared} bytes exceeds serve.max_payload_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestFailed(413, "too_large", f"body exceeds serve.max_payload_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


async def keep_model_fresh(service: ModelService, reload_seconds: float, metrics: ServingMetrics,
                           scorer: Scorer | None = None, arm: Arm = CHAMPION) -> None:
    """Load the model if none is loaded (retrying), then check the alias every ``reload_seconds`` (0 = never)."""
    while not service.ready:
        await _refresh(service, metrics, scorer, arm)
        if not service.ready:
            await asyncio.sleep(LOAD_RETRY_SECONDS)
    while reload_seconds > 0:
        await asyncio.sleep(reload_seconds)
        await _refresh(service, metrics, scorer, arm)


async def _refresh(service: ModelService, metrics: ServingMetrics, scorer: Scorer | None, arm: Arm) -> None:
    try:
        swapped = await asyncio.to_thread(service.refresh)
        if swapped and scorer is not None:
            await asyncio.to_thread(scorer.rebuild_rollout)
    except Exception:  # noqa: BLE001 - keep serving the loaded version; the next check retries
        log.exception("model reload failed (%s); still serving the loaded version", arm)
        metrics.reloads.labels(outcome="failed").inc()
        return
    if swapped:
        metrics.reloads.labels(outcome="loaded").inc()
        if arm == CHAMPION:
            metrics.set_model(service.model.name, service.model.version)
        freeze_heap()


def freeze_heap() -> None:
    """Move everything alive now (torch, mlflow, pyarrow, the loaded model: millions of objects) out of the cyclic
    garbage collector's reach: a full collection over them otherwise stalls every request for hundreds of ms now
    and then. Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


async def write_rollout_rows(scorer: Scorer, recorder: RolloutRecorder, seconds: float) -> None:
    """A metrics row per version to the rollout table every ``seconds`` while requests come in."""
    last = -1
    while True:
        await asyncio.sleep(seconds)
        rollout = scorer.rollout
        seen = sum(s.requests for s in rollout.stats.values())
        if seen != last:
            last = seen
            try:
                await asyncio.to_thread(recorder.write_rows, rollout)
            except Exception:  # noqa: BLE001 - metrics rows are best effort; Prometheus has the same numbers
                log.exception("could not write rollout metrics to %s", recorder.table_uri)
