"""TFLite conversion of a registered Keras image model: convert, check against the SavedModel, log, register.

The source is what :func:`dlspark.tracking.log_keras_model` logs: a TF SavedModel (float32 NHWC
``[B, H, W, C]`` -> logits ``[B, classes]``). It is converted with ``tf.lite.TFLiteConverter.from_saved_model``
as float32 (``fp32``) or with dynamic-range quantization (``dynamic_int8``: int8 weights, float activations),
and run with the LiteRT interpreter (``ai_edge_litert`` when installed, else ``tf.lite.Interpreter``), the batch
axis resized per call. MLflow has no TFLite flavor, so the ``.tflite`` file is logged as a ``python_function``
model (:class:`TFLitePyfunc`, which needs ``dlspark`` importable where it loads) with the source's ``extras/``::

    export_registered_tflite(target, "models:/dlspark-fashion-mnist-keras@champion",
                             "dlspark-fashion-mnist-keras-tflite", quantization="fp32")
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import mlflow.pyfunc
import numpy as np

from dlspark.export.parity import (
    ParityError,
    ParityReport,
    SplitSource,
    batched_logits,
    compare_logits,
)
from dlspark.export.registered import (
    FORMAT_TAG,  # noqa: F401 - re-exported: the tflite module names its tags
    SOURCE_TAG,  # noqa: F401
    Exporter,
    ExportResult,
    existing_export,
    export_registered,
    parity_rows,
)
from dlspark.models.tflite import (
    ARTIFACT,
    QUANTIZATIONS,
    TFLiteError,
    TFLitePyfunc,
    TFLiteRunner,
    check_batch,
    convert_saved_model,
)
from dlspark.tracking.model_logging import EXTRAS_DIR, ExtraArtifact, _pinned, log_extras
from dlspark.tracking.target import TrackingError, TrackingTarget

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)

QUANTIZATION_TAG = "dlspark.quantization"

__all__ = ["ParityError", "ParityReport", "TFLiteError", "TFLiteExportResult", "TFLitePyfunc", "TFLiteRunner",
           "check_parity", "convert_saved_model", "export_registered_tflite", "export_tflite_for_config",
           "log_tflite_model"]


@dataclass(frozen=True)
class TFLiteExportResult(ExportResult):
    """Outcome of :func:`export_registered_tflite`: an :class:`ExportResult` with the variant and its file size."""

    quantization: str = "fp32"
    size_bytes: int = 0


def check_parity(
    reference: Callable[[np.ndarray], Any], runner: TFLiteRunner, inputs: np.ndarray, *,
    min_agreement: float = 0.99, batch_size: int = 256,
) -> ParityReport:
    """Run ``inputs`` through the reference (e.g. the SavedModel's ``serve``) and the TFLite model and compare.

    Raises
    ------
    ParityError
        When fewer than ``min_agreement`` of the rows get the same predicted class from both.
    """
    x = check_batch(inputs, runner.image_shape, "check_parity inputs")
    expected = batched_logits(lambda b: np.asarray(reference(b), np.float32), x, batch_size)
    return compare_logits(expected, batched_logits(runner, x, batch_size), min_agreement=min_agreement,
                          what=f"TFLite model {runner.path.name}")


def log_tflite_model(
    tflite_path: str | Path, input_example: np.ndarray, artifacts: Mapping[str, ExtraArtifact] | None = None, *,
    name: str = "model",
) -> ModelInfo:
    """Log the ``.tflite`` file as a :class:`TFLitePyfunc` model to the active run, plus ``extras/`` files.

    ``input_example`` (float32 NHWC, a few rows) and the model's output on it give the signature;
    ``artifacts`` are files for ``<model>/extras/`` as :func:`dlspark.tracking.log_keras_model` takes them.
    """
    runner = TFLiteRunner(tflite_path)
    example = check_batch(input_example, runner.image_shape, "input_example")
    signature = mlflow.models.infer_signature(example, runner(example))
    with tempfile.TemporaryDirectory(prefix="dlspark-tflite-code-") as tmp:
        code = Path(tmp) / "tflite_model.py"  # MLflow "models from code": an import, not a pickled object
        code.write_text(_MODEL_CODE, encoding="utf-8")
        info = mlflow.pyfunc.log_model(name=name, python_model=str(code), artifacts={ARTIFACT: str(tflite_path)},
                                       signature=signature, input_example=example,
                                       pip_requirements=_pinned("tensorflow-cpu", "numpy", "mlflow"))
    log_extras(info.model_id, artifacts or {})
    return info


_MODEL_CODE = """import mlflow.models

from dlspark.models.tflite import TFLitePyfunc

mlflow.models.set_model(TFLitePyfunc())
"""


def export_registered_tflite(
    target: TrackingTarget, source_uri: str, registered_name: str, *, quantization: str = "fp32",
    inputs: np.ndarray | None = None, parity_split: SplitSource | None = None, experiment: str = "dlspark",
    min_agreement: float = 0.99,
) -> TFLiteExportResult:
    """Convert a registered Keras image model to TFLite and register it as a new version of ``registered_name``.

    Through :func:`dlspark.export.registered.export_registered`, as every format: the source version is pinned,
    downloaded, converted, checked for parity against its SavedModel on ``inputs``, else every row of
    ``parity_split`` (NHWC, normalised as its ``extras/preprocessing.json`` says), else its
    ``extras/input_example.json``; logged with parity metrics (accuracies too when the rows have labels) and the
    file size in a new run of ``experiment``, and registered under the source's promotion metric. Version tags:
    ``dlspark.source_model`` (the pinned source), ``dlspark.format=tflite``, ``dlspark.quantization``. A rerun
    for the same source and quantization returns the existing version.

    Raises
    ------
    TrackingError
        When the source is not a registered version with a promotion metric, is not a Keras SavedModel, or
        there are no rows to check.
    ParityError
        As :func:`check_parity` (the run is then marked FAILED and nothing is registered).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    result = export_registered(target, source_uri, registered_name, tflite_exporter(quantization), inputs=inputs,
                               parity_split=parity_split, experiment=experiment, min_agreement=min_agreement)
    metrics = target.client().get_run(result.run_id).data.metrics if result.run_id else {}
    return TFLiteExportResult(result.model_uri, result.version, result.promoted, result.run_id, result.parity,
                              quantization, int(metrics.get("tflite_size_bytes", 0)))


def tflite_exporter(quantization: str) -> Exporter:
    """The TFLite format for :func:`~dlspark.export.registered.export_registered`: the source is a Keras SavedModel
    (checked against its ``serve`` function on NHWC rows), the file is converted with ``quantization``."""
    def load_source(source_dir: Path, source_uri: str) -> tuple[Path, Callable[[np.ndarray], np.ndarray]]:
        from dlspark.inference.keras_predictor import load_keras_call

        saved_model = keras_saved_model_dir(source_dir, source_uri)
        serve, _ = load_keras_call(source_dir)
        return saved_model, lambda b: np.asarray(serve(b), np.float32)

    def runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
        run = TFLiteRunner(path)
        return lambda b: run(check_batch(b, run.image_shape, "parity rows"))

    return Exporter(
        flavor="tflite", suffix=".tflite", load_source=load_source, channels_last=True, example=_keras_example,
        export=lambda saved_model, _example, out: convert_saved_model(saved_model, out, quantization=quantization),
        runner=runner, log_model=lambda path, example, extras: log_tflite_model(path, example, extras),
        tags={QUANTIZATION_TAG: quantization}, file_metrics=lambda path: {"tflite_size_bytes": float(path.stat().st_size)})


def export_tflite_for_config(
    target: TrackingTarget, cfg: Any, name: str, *, source: str | None = None, export_name: str | None = None,
    parity_split: str = "test", min_agreement: float = 0.99, int8: bool = False,
) -> str:
    """``jobs/models.py export-tflite``: convert ``source`` (default ``models:/<name>@champion``), checked on
    ``parity_split`` of ``cfg.train.table``, and register it as ``export_name`` (default ``<name>-tflite``, or
    ``<name>-tflite-int8`` with ``int8``: dynamic-range quantization); returns the line to print."""
    from dlspark.paths import resolve_path

    source = source or f"models:/{name}@champion"
    split = SplitSource(resolve_path(cfg.paths.data_dir, cfg.train.table), cfg.train.table_format, parity_split)
    result = export_registered_tflite(target, source, export_name or f"{name}-tflite{'-int8' if int8 else ''}",
                                      quantization="dynamic_int8" if int8 else "fp32", parity_split=split,
                                      experiment=cfg.mlflow.experiment, min_agreement=min_agreement)
    role = "champion" if result.promoted else "candidate"
    return (f"exported {source} to TFLite {result.quantization}: {result.model_uri} ({role}), "
            f"{result.size_bytes} bytes; parity {result.parity}")


def existing_tflite_export(
    target: TrackingTarget, registered_name: str, pinned: str, quantization: str,
) -> TFLiteExportResult | None:
    """The version of ``registered_name`` already converted from ``pinned`` with ``quantization``, if any."""
    done = existing_export(target, registered_name, pinned, "tflite", match={QUANTIZATION_TAG: quantization})
    if done is None:
        return None
    metrics = target.client().get_run(done.run_id).data.metrics if done.run_id else {}
    return TFLiteExportResult(done.model_uri, done.version, done.promoted, done.run_id, done.parity, quantization,
                              int(metrics.get("tflite_size_bytes", 0)))


def keras_saved_model_dir(model_dir: Path, source_uri: str) -> Path:
    """The SavedModel folder of a downloaded ``mlflow.keras`` model logged with ``save_exported_model``.

    Raises
    ------
    TrackingError
        When the model (``source_uri``, for the message) is not one.
    """
    from dlspark.inference.model import mlmodel_flavors

    conf = mlmodel_flavors(model_dir).get("keras")
    if not conf or not conf.get("save_exported_model"):
        raise TrackingError(f"{source_uri} is not a Keras model exported as a SavedModel (MLmodel flavors: "
                            f"{sorted(mlmodel_flavors(model_dir))}); log it with dlspark.tracking.log_keras_model")
    return model_dir / conf.get("data", "data") / "model"


def _parity_rows(source_dir: Path, source_uri: str, inputs: np.ndarray | None,
                 split: SplitSource | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(NHWC rows, labels (-1: unknown), description): ``inputs``, else ``split``, else the logged example."""
    return parity_rows(source_dir, source_uri, inputs, split, channels_last=True, example=_keras_example)


def _keras_example(model_dir: Path, source_uri: str) -> np.ndarray:
    path = model_dir / EXTRAS_DIR / "input_example.json"
    if not path.is_file():
        raise TrackingError(f"{source_uri} has no {EXTRAS_DIR}/input_example.json (log_keras_model writes it); pass "
                            "inputs= (a float32 [B, H, W, C] batch) or a parity split to check the TFLite model on")
    return np.asarray(json.loads(path.read_text(encoding="utf-8")), np.float32)
