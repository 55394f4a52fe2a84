"""The services a config describes: ``serve.model`` (or the registered model's ``serve.alias``) and, when
``serve.rollout.mode`` is not ``none``, the challenger (``serve.rollout.challenger``, default the registered
model's ``serve.rollout.challenger_alias``), decoded and tokenized per the ``ingest_images`` / ``ingest_text``
settings, plus the recorder of rollout decisions. Each version runs on the runtime ``serve.runtime`` picks
(null = ``inference.runtime``; ``auto``: its fastest parity-checked export, see ``dlspark.inference.runtime``)."""
from __future__ import annotations

from dataclasses import dataclass

from dlspark.config import AppConfig
from dlspark.inference.inputs import ingest_text_fallback
from dlspark.inference.model import ModelRef, download_for_runtime, resolve_model
from dlspark.paths import resolve_path
from dlspark.serving.rollout_record import RolloutRecorder
from dlspark.serving.service import ModelService, ServedModel, load_served_model
from dlspark.tracking import TrackingTarget, resolve_tracking


@dataclass(frozen=True)
class ServedVersions:
    """What ``jobs/serve.py`` hands to ``create_app``."""

    champion: ModelService
    challenger: ModelService | None
    recorder: RolloutRecorder | None
    champion_uri: str
    challenger_uri: str | None


def served_model_uri(cfg: AppConfig) -> str:
    """``serve.model`` as a URI; null = ``models:/<mlflow.registered_model>@<serve.alias>``."""
    return cfg.model_uri(cfg.serve.model, cfg.serve.alias)


def service_from_config(cfg: AppConfig) -> ModelService:
    """A not yet loaded champion service for ``cfg`` (the app's lifespan loads it; ``refresh()`` loads now)."""
    return _service(cfg, served_model_uri(cfg))


def versions_from_config(cfg: AppConfig) -> ServedVersions:
    """The champion, the challenger (when a rollout is configured) and the decision recorder."""
    uri, other = served_model_uri(cfg), cfg.challenger_model_uri
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    if other is None:
        return ServedVersions(_service(cfg, uri, target), None, None, uri, None)
    recorder = RolloutRecorder(target, cfg.registered_model, resolve_path(cfg.paths.data_dir, cfg.serve.rollout.table))
    return ServedVersions(_service(cfg, uri, target), _service(cfg, other, target), recorder, uri, other)


def _service(cfg: AppConfig, uri: str, target: TrackingTarget | None = None) -> ModelService:
    target = target or resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    images, fallback = cfg.ingest_images, ingest_text_fallback(cfg.ingest_text)

    def load(ref: ModelRef) -> ServedModel:
        return load_served_model(download_for_runtime(target, ref, cfg.serve_runtime), threads=cfg.serve.threads, resize=images.resize,
                                 max_pixels=images.max_pixels, max_file_bytes=cfg.serve.max_payload_bytes,
                                 text_fallback=fallback, top_k=cfg.inference.top_k, batch_size=cfg.serve.max_batch,
                                 max_batch_tokens=cfg.inference.max_batch_tokens)

    return ModelService(lambda: resolve_model(target, uri), load)
