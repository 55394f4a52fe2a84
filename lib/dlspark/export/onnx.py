"""ONNX export of trained models: export, check against torch, log and register in MLflow.

Image models take float32 ``[B, C, H, W]``, text models (the servable :class:`~dlspark.models.servable.StackedTextInput`)
int64 ``[B, 2, L]`` (token ids, attention mask); both give logits ``[B, classes]``. The batch axis, and for text
the sequence axis, stay dynamic. Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no
``onnxscript`` and traces the CNNs and the MiniLM encoder exactly. The registered ONNX version carries the same
``extras/`` files (labels, preprocessing) as the torch version it came from, so ``dlspark.inference`` serves
either the same way::

    export_registered_onnx(target, "models:/dlspark-fashion-mnist@champion", "dlspark-fashion-mnist-onnx",
                           parity_split=SplitSource("/data/tables/images", "parquet", "test"))
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from dlspark.export.parity import ParityError, ParityReport, SplitSource, compare_logits
from dlspark.export.registered import (
    SOURCE_TAG,
    Exporter,
    ExportResult,
    export_registered,
)
from dlspark.export.registered import existing_export as _existing_export
from dlspark.export.registered import logged_example as _logged_example
from dlspark.tracking.model_logging import ExtraArtifact, _pinned, log_extras

if TYPE_CHECKING:
    import torch
    from mlflow.models.model import ModelInfo

__all__ = ["OPSET", "SOURCE_TAG", "ParityError", "ParityReport", "OnnxExportResult", "export_onnx", "check_parity",
           "run_onnx", "log_onnx_model", "export_registered_onnx", "existing_export", "_logged_example"]

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "x", "logits"
OnnxExportResult = ExportResult


def export_onnx(model: torch.nn.Module, example: np.ndarray, path: str | Path, output_name: str = OUTPUT_NAME) -> Path:
    """Export an image or text model to ONNX (opset 17) with dynamic batch (and sequence) axes, in eval mode.

    Parameters
    ----------
    model
        ``float32 [B, C, H, W]`` or ``int64 [B, 2, L]`` -> logits ``[B, classes]``: an eager module, or the
        ``torch.export`` module that ``mlflow.pytorch.load_model`` returns for MLflow's default "pt2" format.
    example
        A batch to trace with (its shape and dtype matter; for text, include a padded row — see
        :func:`dlspark.export.registered.trace_example`).
    path
        The ``.onnx`` file to write; its folder is created.
    output_name
        The graph output's name (``logits``; an embedding model's ``embedding``).

    Returns
    -------
    Path
        ``path``, checked with ``onnx.checker``.
    """
    import onnx
    import torch

    x = torch.from_numpy(check_input(example, "example")).to(_device(model))
    axes = {0: "batch"} if x.dim() == 4 else {0: "batch", 2: "length"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_eval(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks traced as constants
        # advanced indexing (MiniLM's position ids) exports correctly for the non-negative indices traced; every
        # export is checked against torch on real rows before use
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        # PRESERVE: the exporter's own switch to eval mode calls model.train(False), which torch.export modules
        # refuse. The model is already in eval mode, so the exporter's advice against constant folding is moot.
        warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=OPSET,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=[INPUT_NAME], output_names=[output_name],
                          dynamic_axes={INPUT_NAME: axes, output_name: {0: "batch"}})
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

    x = check_input(inputs, "inputs")
    to_eval(model)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).to(_device(model))).float().cpu().numpy()
    return compare_logits(expected, run_onnx(onnx_path, x), min_agreement=min_agreement,
                          what=f"ONNX model {onnx_path}")


def run_onnx(onnx_path: str | Path, x: np.ndarray) -> np.ndarray:
    """The ONNX model's first output for ``x`` (its first input), on onnxruntime's CPU provider."""
    return onnx_runner(Path(onnx_path))(x)


def onnx_runner(onnx_path: Path, threads: int | None = None):  # noqa: ANN201 - Callable[[ndarray], ndarray]
    """``x -> logits`` over one onnxruntime CPU session of ``onnx_path`` (``threads``: intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


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
        A small batch as the model takes it; with the model's output on it, it gives the signature.
    artifacts
        Files for ``<model>/extras/``, as :func:`dlspark.tracking.log_torch_model` takes them.
    name
        The model's name in the run.
    """
    import mlflow
    import onnx

    example = check_input(input_example, "input_example")
    signature = mlflow.models.infer_signature(example, run_onnx(onnx_path, example))
    # One self-contained .onnx file (the default splits weights into side files); fine below protobuf's 2 GB.
    info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name=name, signature=signature, input_example=example,
                                 pip_requirements=_pinned("onnx", "onnxruntime", "numpy", "mlflow"),
                                 save_as_external_data=False)
    log_extras(info.model_id, artifacts or {})
    return info


def export_onnx_int8(model: torch.nn.Module, example: np.ndarray, path: str | Path,
                     calibration: np.ndarray | None = None) -> Path:
    """:func:`export_onnx`, then int8 into ``path``: image models (convolutions) statically, calibrated on
    ``calibration`` rows (:func:`~dlspark.export.optimize.quantize_onnx_static`); text models (MatMul) dynamically
    (:func:`~dlspark.export.optimize.quantize_onnx_int8`), which needs no calibration."""
    from dlspark.export.optimize import quantize_onnx_int8, quantize_onnx_static

    path = Path(path)
    fp32 = export_onnx(model, example, path.with_name(f"{path.stem}-fp32.onnx"))
    if int8_method(example) == "static":
        return quantize_onnx_static(fp32, path, calibration if calibration is not None else example)
    return quantize_onnx_int8(fp32, path)


def int8_method(example: np.ndarray) -> str:
    """``static`` for images ([B, C, H, W]: convolutions), ``dynamic`` for tokens ([B, 2, L]: MatMul)."""
    return "static" if example.ndim == 4 else "dynamic"


ONNX = Exporter("onnx", export_onnx, onnx_runner, lambda path, example, extras: log_onnx_model(path, example, extras),
                suffix=".onnx")
ONNX_INT8 = Exporter("onnx", export_onnx_int8, onnx_runner,
                     lambda path, example, extras: log_onnx_model(path, example, extras), suffix=".onnx",
                     format="onnx-int8", calibrated=True)


def export_registered_onnx(
    target, source_uri: str, registered_name: str, *, inputs: np.ndarray | None = None,  # noqa: ANN001
    parity_split: SplitSource | None = None, experiment: str = "dlspark", min_agreement: float = 0.99,
    int8: bool = False, max_accuracy_drop: float | None = None, calibration_split: SplitSource | None = None,
) -> ExportResult:
    """Export a registered pytorch model to ONNX and register it as a new version of ``registered_name``.

    See :func:`dlspark.export.registered.export_registered` (parameters, parity data, errors); the run logs
    ``onnx_max_abs_diff``, ``onnx_agreement``, ``onnx_parity_rows``, both models' rows/s (and accuracies when the
    rows have labels). ``int8``: quantized (format ``onnx-int8``, metrics ``onnx_int8_*``; image models statically,
    calibrated on the first rows of ``calibration_split``, text models dynamically), registered only when its accuracy
    is at most ``max_accuracy_drop`` (default 0.01) below the source's.
    """
    if int8:
        return export_registered(target, source_uri, registered_name, ONNX_INT8, inputs=inputs,
                                 parity_split=parity_split, experiment=experiment, min_agreement=min_agreement,
                                 max_accuracy_drop=0.01 if max_accuracy_drop is None else max_accuracy_drop,
                                 calibration_split=calibration_split)
    return export_registered(target, source_uri, registered_name, ONNX, inputs=inputs, parity_split=parity_split,
                             experiment=experiment, min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop)


def existing_export(target, registered_name: str, pinned: str) -> ExportResult | None:  # noqa: ANN001
    """The ONNX version of ``registered_name`` already exported from ``pinned``, if any."""
    return _existing_export(target, registered_name, pinned, "onnx")


def check_input(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as float32 images ``[B, C, H, W]`` or int64 stacked tokens ``[B, 2, L]``; ValueError otherwise."""
    if isinstance(x, np.ndarray) and len(x) > 0:
        if x.ndim == 4:
            return np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3 and x.shape[1] == 2 and np.issubdtype(x.dtype, np.integer):
            return np.ascontiguousarray(x, dtype=np.int64)
    raise ValueError(f"{what} must be a non-empty numpy batch as the servable model takes it: float32 [B, C, H, W] "
                     f"images or int64 [B, 2, L] token ids + attention mask; got {type(x).__name__} "
                     f"{getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}")


def to_eval(model: torch.nn.Module) -> None:
    """Eval mode. torch.export modules refuse ``eval()``: their graph was traced in the mode the model had
    (eval, by :func:`dlspark.tracking.log_torch_model`), so only the flag the exporter reads is cleared."""
    try:
        model.eval()
    except NotImplementedError:
        model.training = False


def _device(model: torch.nn.Module):  # noqa: ANN202
    import torch

    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
