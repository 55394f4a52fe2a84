"""The FastAPI app: ``POST /predict``, ``GET /health``, ``GET /ready``, ``GET /metrics``.

``create_app(service, cfg)`` wires a :class:`~dlspark.serving.service.ModelService` to a
:class:`~dlspark.serving.batcher.MicroBatcher`. Its lifespan starts the batcher and one background task that
loads the model (when the service has none yet) and then checks the alias every ``reload_seconds``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from dlspark.config.schema import ServeConfig
from dlspark.serving.batcher import MicroBatcher, QueueFull
from dlspark.serving.metrics import ServingMetrics
from dlspark.serving.payload import PayloadError, parse_payload
from dlspark.serving.service import InstanceError, ModelNotReady, ModelService, prepare, run_batch

log = logging.getLogger(__name__)

LOAD_RETRY_SECONDS = 5.0


def create_app(service: ModelService, cfg: ServeConfig) -> FastAPI:
    """The serving app for ``service`` with the batching, payload and reload settings of ``cfg``."""
    metrics = ServingMetrics()
    batcher: MicroBatcher = MicroBatcher(lambda values: run_batch(service.model, values), max_batch=cfg.max_batch,
                                         max_wait_ms=cfg.max_wait_ms, queue_size=cfg.queue_size,
                                         on_batch=metrics.observe_batch)
    metrics.queue_depth.set_function(lambda: batcher.depth)
    if service.ready:
        metrics.set_model(service.model.name, service.model.version)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        keeper = asyncio.create_task(keep_model_fresh(service, cfg.reload_seconds, metrics), name="dlspark-model-reload")
        try:
            yield
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await batcher.stop()

    app = FastAPI(title="dlspark model server", lifespan=lifespan)
    app.state.service, app.state.batcher, app.state.metrics = service, batcher, metrics

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"ready": False, "detail": "model loading"}, status_code=503)
        model = service.model
        return JSONResponse({"ready": True, "model": model.name, "version": model.version, "kind": model.kind,
                             "uri": model.bundle.ref.uri, "requested": model.bundle.ref.requested})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        start = time.perf_counter()
        status, reason, body = await _predict(request, service, batcher, cfg)
        metrics.observe_request(status, time.perf_counter() - start, reason)
        headers = {"Retry-After": str(body.pop("retry_after"))} if "retry_after" in body else None
        return JSONResponse(body, status_code=status, headers=headers)

    return app


async def _predict(request: Request, service: ModelService, batcher: MicroBatcher,
                   cfg: ServeConfig) -> tuple[int, str | None, dict[str, Any]]:
    """(status, error reason or None, response body) of one ``POST /predict``."""
    try:
        raw = await read_body(request, cfg.max_payload_bytes)
        instances = parse_payload(raw, request.headers.get("content-type"))
        if len(instances) > cfg.queue_size:
            raise PayloadError(413, "too_many_instances", f"{len(instances)} instances in one request; at most "
                                                          f"serve.queue_size={cfg.queue_size}: split the request")
        values = await asyncio.to_thread(prepare, service.model, instances)
        predictions = await batcher.submit(values)
    except (PayloadError, InstanceError) as exc:
        return exc.status, exc.reason, {"error": str(exc), "reason": exc.reason}
    except ModelNotReady as exc:
        return 503, "not_ready", {"error": str(exc), "reason": "not_ready", "retry_after": 5}
    except QueueFull as exc:
        return 503, "queue_full", {"error": str(exc), "reason": "queue_full", "retry_after": exc.retry_after}
    except Exception as exc:  # noqa: BLE001 - the request boundary: log it, answer 500
        log.exception("predict failed")
        return 500, "internal", {"error": f"{type(exc).__name__}: {exc}", "reason": "internal"}
    first = predictions[0]
    return 200, None, {"model": first["model"], "version": first["version"], "predictions": predictions}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared Content-Length) exceeds ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadError(413, "too_large", f"body of {declared} bytes exceeds serve.max_payload_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadError(413, "too_large", f"body exceeds serve.max_payload_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


async def keep_model_fresh(service: ModelService, reload_seconds: float, metrics: ServingMetrics) -> None:
    """Load the model if none is loaded (retrying), then check the alias every ``reload_seconds`` (0 = never)."""
    while not service.ready:
        await _refresh(service, metrics)
        if not service.ready:
            await asyncio.sleep(LOAD_RETRY_SECONDS)
    while reload_seconds > 0:
        await asyncio.sleep(reload_seconds)
        await _refresh(service, metrics)


async def _refresh(service: ModelService, metrics: ServingMetrics) -> None:
    try:
        swapped = await asyncio.to_thread(service.refresh)
    except Exception:  # noqa: BLE001 - keep serving the loaded version; the next check retries
        log.exception("model reload failed; still serving the loaded version")
        metrics.reloads.labels(outcome="failed").inc()
        return
    if swapped:
        metrics.reloads.labels(outcome="loaded").inc()
        metrics.set_model(service.model.name, service.model.version)
