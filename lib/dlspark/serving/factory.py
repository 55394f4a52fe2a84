"""The services a config describes: ``serve.model`` (or the registered model's ``serve.alias``) and, when
``serve.rollout.mode`` is not ``none``, the challenger (``serve.rollout.challenger``, default the registered
model's ``serve.rollout.challenger_alias``), decoded and tokenized per the ``ingest_images`` / ``ingest_text``
settings, plus the recorder of rollout decisions. Each version runs on the runtime ``serve.runtime`` picks
(null = ``inference.runtime``; ``auto``: its fastest parity-checked export, see ``dlspark.inference.runtime``)."""
from __future__ import annotations

from dataclasses import dataclass

from dlspark.config import AppConfig
from dlspark.embeddings.index_store import index_location
from dlspark.inference.inputs import ingest_text_fallback
from dlspark.inference.model import ModelBundle, download_for_runtime, resolve_model
from dlspark.inference.predictors import Predictor, TorchPredictor, eager_module
from dlspark.paths import resolve_path
from dlspark.serving.rollout_record import RolloutRecorder
from dlspark.serving.service import ModelService, ServedModel, load_served_model
from dlspark.serving.similar import IndexedVersion, SimilarModel, indexed_version, load_similar_model, with_rebuilt_index
from dlspark.tracking import TrackingTarget, resolve_tracking


@dataclass(frozen=True)
class ServedVersions:
    """What ``jobs/serve.py`` hands to ``create_app``."""

    champion: ModelService
    challenger: ModelService | None
    recorder: RolloutRecorder | None
    champion_uri: str
    challenger_uri: str | None
    similar: ModelService | None = None     # GET/POST /similar (serve.similar)


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
        return ServedVersions(_service(cfg, uri, target), None, None, uri, None, similar_service(cfg, target))
    recorder = RolloutRecorder(target, cfg.registered_model, resolve_path(cfg.paths.data_dir, cfg.serve.rollout.table))
    return ServedVersions(_service(cfg, uri, target), _service(cfg, other, target), recorder, uri, other,
                          similar_service(cfg, target))


def _service(cfg: AppConfig, uri: str, target: TrackingTarget | None = None) -> ModelService:
    target = target or resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    return ModelService(lambda: resolve_model(target, uri),
                        lambda ref: _served(cfg, download_for_runtime(target, ref, cfg.serve_runtime)))


def _served(cfg: AppConfig, bundle: ModelBundle, predictor: Predictor | None = None) -> ServedModel:
    """``bundle`` loaded to serve, decoding and tokenizing as the ingest settings of ``cfg`` say."""
    images = cfg.ingest_images
    return load_served_model(bundle, threads=cfg.serve.threads, resize=images.resize, max_pixels=images.max_pixels,
                             max_file_bytes=cfg.serve.max_payload_bytes, text_fallback=ingest_text_fallback(cfg.ingest_text),
                             top_k=cfg.inference.top_k, batch_size=cfg.serve.max_batch,
                             max_batch_tokens=cfg.inference.max_batch_tokens, predictor=predictor)


def similar_service(cfg: AppConfig, target: TrackingTarget | None = None) -> ModelService | None:
    """The ``/similar`` service (``serve.similar``): the index of ``serve.similar.model`` (null = the served model)
    with that version's eager torch module; None when ``serve.similar.enabled`` is off."""
    scfg = cfg.serve.similar
    if not scfg.enabled:
        return None
    target = target or resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    uri = cfg.model_uri(scfg.model, cfg.serve.alias) if scfg.model else served_model_uri(cfg)

    def resolve() -> IndexedVersion:
        ref = resolve_model(target, uri)
        return indexed_version(ref, index_location(cfg, ref.name, ref.version)[1])

    def load(version: IndexedVersion) -> SimilarModel:
        if service.ready:
            current: SimilarModel = service.model  # type: ignore[assignment]  # this service holds SimilarModels
            if current.served.bundle.source_ref.uri == version.ref.uri:  # the same version's index was rebuilt
                return with_rebuilt_index(current, version.folder)
        bundle = download_for_runtime(target, version.ref, "source")
        module = eager_module(bundle.ref.uri, bundle.local_dir)
        return load_similar_model(_served(cfg, bundle, TorchPredictor(module)), module, version.folder, scfg.runtime)

    service = ModelService(resolve, load)  # type: ignore[arg-type]
    return service
