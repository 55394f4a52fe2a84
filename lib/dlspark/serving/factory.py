"""The :class:`ModelService` a config describes: ``serve.model`` (or the registered model's ``serve.alias``)
in the config's tracking store, decoded and tokenized per the ``ingest_images`` / ``ingest_text`` settings."""
from __future__ import annotations

from dlspark.config import AppConfig
from dlspark.inference.inputs import ingest_text_fallback
from dlspark.inference.model import ModelRef, download_model, model_uri_for, resolve_model
from dlspark.serving.service import ModelService, ServedModel, load_served_model
from dlspark.tracking import resolve_tracking


def served_model_uri(cfg: AppConfig) -> str:
    """``serve.model`` as a URI; null = ``models:/<mlflow.registered_model>@<serve.alias>``."""
    name = cfg.serve.model or cfg.mlflow.registered_model or f"dlspark-{cfg.train.task}"
    return model_uri_for(name, cfg.serve.alias)


def service_from_config(cfg: AppConfig) -> ModelService:
    """A not yet loaded service for ``cfg`` (the app's lifespan loads it; call ``refresh()`` to load now)."""
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    uri = served_model_uri(cfg)
    images, fallback = cfg.ingest_images, ingest_text_fallback(cfg.ingest_text)

    def load(ref: ModelRef) -> ServedModel:
        return load_served_model(download_model(target, ref), threads=cfg.serve.threads, resize=images.resize,
                                 max_pixels=images.max_pixels, max_file_bytes=cfg.serve.max_payload_bytes,
                                 text_fallback=fallback, top_k=cfg.inference.top_k, batch_size=cfg.serve.max_batch)

    return ModelService(lambda: resolve_model(target, uri), load)

