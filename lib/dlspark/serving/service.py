"""The served model: loaded once, swapped atomically when its alias moves, and the per-batch scoring call.

:class:`ServedModel` bundles a downloaded model with its predictor and the preprocessing it was trained
with: images are decoded by :func:`dlspark.images.decode.decode_image` (the function ingest runs) to the
model's ``image_shape``; texts are normalised and tokenized by :func:`dlspark.inference.inputs.text_inputs`
(what batch inference runs). Scoring itself is :func:`dlspark.inference.scoring.predict` and
:func:`~dlspark.inference.scoring.prediction_columns`, so a served prediction equals a batch one.

:class:`ModelService` holds the current :class:`ServedModel`. :meth:`ModelService.refresh` resolves the alias
again and, when it points at another version, loads that version beside the old one and replaces the
reference in one assignment: a batch that already took the old model finishes on it.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from dlspark.images.decode import ImageRejected, ImageSpec, decode_image
from dlspark.inference.inputs import ModelInputs, TextPreprocessing, text_inputs
from dlspark.inference.model import ModelBundle, ModelRef
from dlspark.inference.predictors import Predictor, load_predictor
from dlspark.inference.scoring import ScoringSpec, predict, prediction_columns
from dlspark.serving.payload import Instance
from dlspark.text.normalize import normalize_text

log = logging.getLogger(__name__)


class InstanceError(ValueError):
    """One instance cannot be scored (HTTP 422); the message names it and says why."""

    def __init__(self, index: int, reason: str, detail: str, status: int = 422) -> None:
        super().__init__(f"instance {index}: {reason}: {detail}")
        self.index, self.reason, self.status = index, reason, status


class ModelNotReady(RuntimeError):
    """No model is loaded yet (HTTP 503)."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and everything needed to turn request instances into its predictions."""

    bundle: ModelBundle
    predictor: Predictor
    spec: ScoringSpec
    image: ImageSpec | None = None              # image models: how ingest decoded files
    text: TextPreprocessing | None = None       # text models: tokenizer, length, normalisation
    tokenizer: Any = None

    @property
    def kind(self) -> str:
        return self.bundle.kind

    @property
    def name(self) -> str:
        """The registered model the alias is on (also when an export of its version runs)."""
        ref = self.bundle.source_ref
        return ref.name or ref.uri

    @property
    def version(self) -> str | None:
        return self.bundle.source_ref.version

    @property
    def runtime(self) -> str:
        """What scores: ``source`` or e.g. ``onnx = dlspark-fashion-mnist-onnx/1`` (``serve.runtime``)."""
        return self.bundle.runtime_label


def load_served_model(bundle: ModelBundle, *, threads: int | None = None, resize: str = "center_crop",
                      max_pixels: int = 40_000_000, max_file_bytes: int = 64 * 1024 * 1024,
                      text_fallback: Mapping[str, Any] | None = None, top_k: int = 3, batch_size: int = 256,
                      max_batch_tokens: int | None = None, predictor: Predictor | None = None) -> ServedModel:
    """Load ``bundle``'s predictor on CPU and its preprocessing (``resize`` etc. as in ``ingest_images``)."""
    spec = ScoringSpec(cache_key=bundle.ref.uri, flavor=bundle.flavor, labels=bundle.labels,
                       preprocessing=bundle.preprocessing, model_dir=bundle.local_dir, text_mode="text",
                       text_fallback=text_fallback, batch_size=batch_size, max_batch_tokens=max_batch_tokens, top_k=top_k,
                       device="cpu", threads=threads)
    predictor = predictor or load_predictor(bundle.local_dir, bundle.flavor, device="cpu", threads=threads)
    if bundle.kind == "image":
        image = image_spec(bundle.preprocessing, resize, max_pixels, max_file_bytes)
        return warm_up(ServedModel(bundle, predictor, spec, image=image), np.zeros(image.shape, np.uint8))
    from dlspark.text.tokenize import load_tokenizer

    text = TextPreprocessing.from_spec(bundle.preprocessing, text_fallback)
    return warm_up(ServedModel(bundle, predictor, spec, text=text, tokenizer=load_tokenizer(text.tokenizer)), "warm up")


def warm_up(model: ServedModel, value: np.ndarray | str) -> ServedModel:
    """One forward pass before the model takes traffic: its first request (and a challenger's first latencies,
    which a rollout judges) should not pay for thread pools and lazy initialisation."""
    try:
        run_batch(model, [value])
    except Exception:  # noqa: BLE001 - a model that cannot score fails its requests, where it is counted
        log.warning("warm-up pass of %s version %s failed; its requests will fail too", model.name, model.version,
                    exc_info=True)
    return model


def image_spec(preprocessing: Mapping[str, Any], resize: str, max_pixels: int, max_file_bytes: int) -> ImageSpec:
    """The :class:`ImageSpec` ingest used for a model trained on ``image_shape`` [H, W, C] (C 1 = L, 3 = RGB)."""
    height, width, channels = (int(v) for v in preprocessing["image_shape"])
    if channels not in (1, 3):
        raise ValueError(f"image_shape {list(preprocessing['image_shape'])}: serving decodes 1 (L) or 3 (RGB) channels")
    return ImageSpec((height, width), "L" if channels == 1 else "RGB", resize, max_pixels, max_file_bytes)  # type: ignore[arg-type]


def prepare(model: ServedModel, instances: Sequence[Instance]) -> list[np.ndarray | str]:
    """Decoded pixels ``[H, W, C]`` or the raw text per instance; raises :class:`InstanceError` for the first bad one."""
    return [_prepare_one(model, instance, i) for i, instance in enumerate(instances)]


def _prepare_one(model: ServedModel, instance: Instance, index: int) -> np.ndarray | str:
    if instance.kind != model.kind:
        raise InstanceError(index, "wrong_kind", f"got {'text' if instance.text is not None else 'an image'} but "
                                                 f"{model.name} is a{'n' if model.kind == 'image' else ''} {model.kind} model")
    if model.image is not None and instance.pixels is not None:
        return _check_pixels(model, instance.pixels, index)
    if model.image is not None:
        try:
            decoded = decode_image(instance.image or b"", model.image)
        except ImageRejected as exc:
            raise InstanceError(index, exc.reason, exc.detail) from exc
        return np.frombuffer(decoded.pixels, np.uint8).reshape(decoded.shape)
    assert model.text is not None and instance.text is not None
    if not normalize_text(instance.text, model.text.normalize):
        raise InstanceError(index, "empty_text", "nothing left to score after normalisation; send non-empty text")
    return instance.text


def _check_pixels(model: ServedModel, pixels: np.ndarray, index: int) -> np.ndarray:
    """A pixel tensor sent as such: it must already be the model's ``[H, W, C]`` uint8 input."""
    assert model.image is not None
    shape = model.image.shape
    if pixels.shape != shape or pixels.dtype != np.uint8:
        raise InstanceError(index, "bad_pixels", f"pixels of shape {list(pixels.shape)} ({pixels.dtype}); "
                                                 f"{model.name} takes uint8 {list(shape)} (or send the image file)")
    return pixels


def batch_inputs(model: ServedModel, values: Sequence[np.ndarray | str]) -> ModelInputs:
    """The model inputs of prepared values (stacked pixels, or token ids); a value prepared for another version's
    input shape is an error row (``model_changed``)."""
    if model.kind == "image":
        shape = model.image.shape if model.image is not None else ()
        good = [i for i, v in enumerate(values) if isinstance(v, np.ndarray) and v.shape == shape]
        errors: list[str | None] = [None if i in set(good) else "model_changed: decoded for another model version, "
                                    "retry" for i in range(len(values))]
        pixels = np.stack([values[i] for i in good]) if good else np.zeros((0, *shape), np.uint8)
        return ModelInputs(np.asarray(good, np.int64), {"pixels": pixels}, errors)
    assert model.text is not None
    texts = [v if isinstance(v, str) else None for v in values]
    return text_inputs(pa.table({"text": pa.array(texts, pa.string())}), model.text, model.tokenizer)


def run_batch(model: ServedModel, values: Sequence[np.ndarray | str]) -> list[dict[str, Any] | Exception]:
    """One forward pass over prepared values; per value the prediction dict or an :class:`InstanceError`."""
    inputs = batch_inputs(model, values)
    probs = predict(model.predictor, inputs, model.spec)
    return _rows(model, prediction_columns(probs, inputs, model.spec.labels, model.spec.top_k, len(values)))


def instance_error(index: int, error: str) -> InstanceError:
    """Instance ``index``'s input error (``"reason: detail"``) as the request error: 503 for a value prepared for
    another model version (retry), else 422."""
    reason, _, detail = error.partition(": ")
    return InstanceError(index, reason, detail, status=503 if reason == "model_changed" else 422)


def _rows(model: ServedModel, columns: list[pa.Array]) -> list[dict[str, Any] | Exception]:
    label, index, prob, _, top_k, error = (c.to_pylist() for c in columns)
    out: list[dict[str, Any] | Exception] = []
    for i in range(len(label)):
        if error[i] is not None:
            out.append(instance_error(i, error[i]))
            continue
        out.append({"label": label[i], "index": index[i], "probability": prob[i], "top_k": top_k[i],
                    "model": model.name, "version": model.version})
    return out


class ModelService:
    """The current :class:`ServedModel`, (re)loaded from whatever ``resolve`` returns.

    Parameters
    ----------
    resolve
        Returns the :class:`ModelRef` the alias points at now (e.g. ``lambda: resolve_model(target, uri)``); any
        ref with a ``uri`` (what it is: a new one reloads) and ``requested`` (for the log) will do.
    load
        Downloads and loads a ref into a :class:`ServedModel`.
    """

    def __init__(self, resolve: Callable[[], ModelRef], load: Callable[[ModelRef], ServedModel]) -> None:
        self._resolve, self._load = resolve, load
        self._model: ServedModel | None = None
        self._loaded_uri: str | None = None
        self._lock = threading.Lock()       # one load at a time; readers never wait on it

    @property
    def model(self) -> ServedModel:
        """The model to use now; raises :class:`ModelNotReady` before the first load finished."""
        model = self._model
        if model is None:
            raise ModelNotReady("the model is still loading: poll GET /ready")
        return model

    @property
    def ready(self) -> bool:
        return self._model is not None

    def refresh(self) -> bool:
        """Load the version the alias points at if it is not the one being served; True when it swapped."""
        with self._lock:
            ref = self._resolve()
            current = self._model
            if current is not None and self._loaded_uri == ref.uri:
                return False
            model = self._load(ref)
            self._model, self._loaded_uri = model, ref.uri      # the swap: one reference assignment serves it
            log.info("serving %s (%s) version %s on %s%s", model.name, ref.requested, model.version, model.runtime,
                     "" if current is None else f", was version {current.version}")
            return True
