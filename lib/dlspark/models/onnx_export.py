"""ONNX export of the trained image model: export, check it against torch, log and register it in MLflow.

Image models only (float32 ``[B, C, H, W]`` -> logits ``[B, classes]``); the batch axis stays dynamic.
Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no ``onnxscript`` and traces
these plain CNNs exactly. The registered ONNX version carries the same ``extras/`` files (labels,
preprocessing) as the torch version it came from, so ``dlspark.inference`` serves either the same way::

    export_registered_onnx(target, "models:/dlspark-fashion-mnist@champion", "dlspark-fashion-mnist-onnx")
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from dlspark.tracking.model_logging import EXTRAS_DIR, ExtraArtifact, _pinned, log_extras
from dlspark.tracking.registry import METRIC_NAME_TAG, METRIC_VALUE_TAG, register_and_promote
from dlspark.tracking.target import TrackingError, TrackingTarget, start_run

if TYPE_CHECKING:
    import torch
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "x", "logits"
SOURCE_TAG = "dlspark.source_model"


class ParityError(ValueError):
    """The ONNX model's predictions disagree with the torch model's on too many rows."""


@dataclass(frozen=True)
class ParityReport:
    """How closely the ONNX model reproduces the torch model on one batch."""

    rows: int
    max_abs_diff: float  # largest |logit difference| over the batch
    agreement: float     # fraction of rows whose argmax class is the same


@dataclass(frozen=True)
class OnnxExportResult:
    """Outcome of :func:`export_registered_onnx`."""

    model_uri: str       # models:/<registered_name>/<version>
    version: str
    promoted: bool       # whether the new version became champion
    run_id: str
    parity: ParityReport


def export_onnx(model: torch.nn.Module, example: np.ndarray, path: str | Path) -> Path:
    """Export an image model to ONNX (opset 17) with a dynamic batch axis; the model is put in eval mode.

    Parameters
    ----------
    model
        ``float32 [B, C, H, W] -> logits [B, classes]``: an eager module, or the ``torch.export`` module that
        ``mlflow.pytorch.load_model`` returns for MLflow's default "pt2" format.
    example
        A float32 ``[B, C, H, W]`` batch to trace with (its values do not matter, its shape does).
    path
        The ``.onnx`` file to write; its folder is created.

    Returns
    -------
    Path
        ``path``, checked with ``onnx.checker``.
    """
    import onnx
    import torch

    x = torch.from_numpy(_check_images(example, "example")).to(_device(model))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_eval(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        # PRESERVE: the exporter's own switch to eval mode calls model.train(False), which torch.export modules
        # refuse. The model is already in eval mode, so the exporter's advice against constant folding is moot.
        warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=OPSET,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(str(path))
    return path


def check_parity(
    model: torch.nn.Module, onnx_path: str | Path, inputs: np.ndarray, *, min_agreement: float = 0.99,
) -> ParityReport:
    """Run ``inputs`` through the torch model and the ONNX file (onnxruntime, CPU) and compare.

    Raises
    ------
    ParityError
        When fewer than ``min_agreement`` of the rows get the same predicted class from both.
    """
    import torch

    x = _check_images(inputs, "inputs")
    _to_eval(model)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).to(_device(model))).float().cpu().numpy()
    got = run_onnx(onnx_path, x)
    report = ParityReport(len(x), float(np.abs(got - expected).max()),
                          float((got.argmax(axis=1) == expected.argmax(axis=1)).mean()))
    if report.agreement < min_agreement:
        raise ParityError(f"ONNX model {onnx_path} predicts the torch model's class on only {report.agreement:.1%} "
                          f"of {report.rows} rows (need {min_agreement:.1%}; max |logit diff| "
                          f"{report.max_abs_diff:.3g}); the model likely has an op the exporter mistraces — "
                          "compare layer outputs, or lower min_agreement if the gap is expected")
    return report


def run_onnx(onnx_path: str | Path, x: np.ndarray) -> np.ndarray:
    """The ONNX model's first output for ``x`` (its first input), on onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def log_onnx_model(
    onnx_path: str | Path, input_example: np.ndarray, artifacts: Mapping[str, ExtraArtifact] | None = None, *,
    name: str = "model",
) -> ModelInfo:
    """Log the ONNX file with the ``mlflow.onnx`` flavor to the active run, plus ``extras/`` files.

    Parameters
    ----------
    onnx_path
        The exported model (e.g. from :func:`export_onnx`).
    input_example
        A small float32 ``[B, C, H, W]`` batch; with the model's output on it, it gives the signature.
    artifacts
        Files for ``<model>/extras/``, as :func:`dlspark.tracking.log_torch_model` takes them.
    name
        The model's name in the run.
    """
    import mlflow
    import onnx

    example = _check_images(input_example, "input_example")
    signature = mlflow.models.infer_signature(example, run_onnx(onnx_path, example))
    # One self-contained .onnx file (the default splits weights into side files); fine below protobuf's 2 GB.
    info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name=name, signature=signature, input_example=example,
                                 pip_requirements=_pinned("onnx", "onnxruntime", "numpy", "mlflow"),
                                 save_as_external_data=False)
    log_extras(info.model_id, artifacts or {})
    return info


def export_registered_onnx(
    target: TrackingTarget, source_uri: str, registered_name: str, *, inputs: np.ndarray | None = None,
    experiment: str = "dlspark", min_agreement: float = 0.99,
) -> OnnxExportResult:
    """Export a registered pytorch image model to ONNX and register it as a new version of ``registered_name``.

    The source version (aliases resolved once, so a moving alias cannot split the export) and its ``extras/``
    are downloaded, exported, checked for parity on ``inputs`` (default:
    the source's logged input example), logged with parity metrics in a new run of ``experiment``, and
    registered with :func:`register_and_promote` under the source version's promotion metric, so the ONNX
    model's ``champion`` follows the same rule as the torch model's. The ONNX version's tag
    ``dlspark.source_model`` names the torch version it came from.

    Parameters
    ----------
    target
        Where the source is registered and the ONNX model goes.
    source_uri
        A registered version: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.
    registered_name
        The registered model that receives the ONNX version (created if missing).

    Raises
    ------
    TrackingError
        When the source is not a registered version with a promotion metric, or has no input example
        and ``inputs`` is not given.
    ParityError
        As :func:`check_parity` (the run is then marked FAILED and nothing is registered).
    """
    import mlflow

    from dlspark.inference.predictors import load_torch_module

    pinned, metric_name, metric_value = _resolve_source(target, source_uri)
    done = existing_export(target, registered_name, pinned)
    if done is not None:
        log.info("%s was already exported to ONNX as %s", pinned, done.model_uri)
        return done
    with start_run(target, experiment, f"onnx-export {pinned}", tags={SOURCE_TAG: pinned}) as run, \
            tempfile.TemporaryDirectory(prefix="dlspark-onnx-") as tmp:
        # start_run points the fluent API (models:/ resolution included) at target
        source_dir = Path(mlflow.artifacts.download_artifacts(pinned, dst_path=str(Path(tmp) / "source")))
        model = load_torch_module(str(source_dir))  # eager when extras/model_spec.json says how to build it
        batch = inputs if inputs is not None else _logged_example(source_dir, source_uri)
        onnx_path = export_onnx(model, batch, Path(tmp) / "model.onnx")
        parity = check_parity(model, onnx_path, batch, min_agreement=min_agreement)
        mlflow.log_metrics({"onnx_max_abs_diff": parity.max_abs_diff, "onnx_agreement": parity.agreement})
        log_onnx_model(onnx_path, batch[:4], _extras_in(source_dir))
    result = register_and_promote(target, registered_name, run.info.run_id, "model", metric_name, metric_value)
    target.client().set_model_version_tag(registered_name, result.version, SOURCE_TAG, pinned)
    log.info("registered ONNX export of %s as %s version %s (parity: %s)", pinned, registered_name,
             result.version, parity)
    return OnnxExportResult(f"models:/{registered_name}/{result.version}", result.version, result.promoted,
                            run.info.run_id, parity)


def existing_export(target: TrackingTarget, registered_name: str, pinned: str) -> OnnxExportResult | None:
    """The version of ``registered_name`` already exported from ``pinned`` (reruns register nothing new), if any."""
    client = target.client()
    try:
        versions = client.search_model_versions(f"name='{registered_name}'")
    except Exception:  # noqa: BLE001 - no such registered model yet
        return None
    for mv in versions:
        if (mv.tags or {}).get(SOURCE_TAG) == pinned:
            metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
            parity = ParityReport(rows=0, max_abs_diff=float(metrics.get("onnx_max_abs_diff", float("nan"))),
                                  agreement=float(metrics.get("onnx_agreement", float("nan"))))
            champion = client.get_registered_model(registered_name).aliases.get("champion")
            return OnnxExportResult(f"models:/{registered_name}/{mv.version}", str(mv.version),
                                    str(champion) == str(mv.version), mv.run_id or "", parity)
    return None


def _resolve_source(target: TrackingTarget, source_uri: str) -> tuple[str, str, float]:
    """(``models:/<name>/<version>``, metric name, metric value) of the registered version ``source_uri`` names."""
    from dlspark.inference.model import ModelResolutionError, resolve_model

    try:
        ref = resolve_model(target, source_uri)
    except ModelResolutionError as exc:
        raise TrackingError(str(exc)) from exc
    if ref.name is None or ref.version is None:
        raise TrackingError(f"source {source_uri!r} is not a registered model version; "
                            "pass models:/<name>@<alias> or models:/<name>/<version>")
    tags = target.client().get_model_version(ref.name, ref.version).tags or {}
    if METRIC_NAME_TAG not in tags or METRIC_VALUE_TAG not in tags:
        raise TrackingError(f"{source_uri} (version {ref.version}) has no {METRIC_NAME_TAG}/{METRIC_VALUE_TAG} tags "
                            "to register the ONNX version by; register the source with register_and_promote")
    return ref.uri, tags[METRIC_NAME_TAG], float(tags[METRIC_VALUE_TAG])


def _logged_example(model_dir: Path, source_uri: str) -> np.ndarray:
    from mlflow.models import Model

    example = Model.load(str(model_dir)).load_input_example(str(model_dir))
    if example is None:
        raise TrackingError(f"{source_uri} was logged without an input example; pass inputs= (a float32 "
                            "[B, C, H, W] batch) to check the ONNX export against")
    return np.asarray(example, np.float32)


def _extras_in(model_dir: Path) -> dict[str, ExtraArtifact]:
    """``{file name: path}`` of the files under ``<model_dir>/extras/``."""
    folder = model_dir / EXTRAS_DIR
    return {f.name: f for f in sorted(folder.iterdir()) if f.is_file()} if folder.is_dir() else {}


def _check_images(x: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or len(x) == 0:
        raise ValueError(f"{what} must be a non-empty float32 [B, C, H, W] numpy batch, got "
                         f"{type(x).__name__} {getattr(x, 'shape', '')}; ONNX export covers image models")
    return np.ascontiguousarray(x, dtype=np.float32)


def _to_eval(model: torch.nn.Module) -> None:
    """Eval mode. torch.export modules refuse ``eval()``: their graph was traced in the mode the model had
    (eval, by :func:`dlspark.tracking.log_torch_model`), so only the flag the exporter reads is cleared."""
    try:
        model.eval()
    except NotImplementedError:
        model.training = False


def _device(model: torch.nn.Module):
    import torch

    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
