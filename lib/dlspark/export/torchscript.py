"""TorchScript export of trained models: trace, check against the eager model, log and register in MLflow.

The servable module (image ``float32 [B, C, H, W]`` or text ``int64 [B, 2, L]`` -> logits) is traced with
``torch.jit.trace``; the traced graph keeps batch and sequence length free (checked by the parity rows, whose
lengths differ from the trace example's). It is logged with MLflow's pytorch flavor in its ``pickle``
serialization (MLflow saves a ``ScriptModule`` with ``torch.jit.save`` and loads it with ``torch.jit.load``;
the default ``pt2`` format refuses ScriptModules), so ``dlspark.inference`` scores it like any pytorch model.
TorchScript is deprecated in torch 2.13 (``torch.jit.trace``/``save``/``load`` warn; silenced here): it is offered
for runtimes that load ``.pt`` archives (libtorch, C++); ONNX is the export to prefer::

    export_registered_torchscript(target, "models:/dlspark-sentiment@champion", "dlspark-sentiment-torchscript")
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from dlspark.export.onnx import check_input, to_eval
from dlspark.export.parity import SplitSource
from dlspark.export.registered import Exporter, ExportResult, export_registered, torch_logits
from dlspark.tracking.model_logging import ExtraArtifact, _pinned, log_extras

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)


def export_torchscript(model: Any, example: np.ndarray, path: str | Path) -> Path:
    """Trace ``model`` (eval mode) on ``example`` and save the ScriptModule to ``path`` (``torch.jit.save``).

    Parameters
    ----------
    model
        The servable eager module (see :func:`dlspark.models.servable.servable`).
    example
        A batch as the model takes it; for text include a padded row (see
        :func:`dlspark.export.registered.trace_example`).
    path
        The ``.pt`` file to write; its folder is created.
    """
    import torch

    x = torch.from_numpy(check_input(example, "example"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_eval(model)
    with _quiet_jit(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # input checks traced as constants
        traced = torch.jit.trace(model, (x,), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def torchscript_runner(path: Path):  # noqa: ANN201 - Callable[[ndarray], ndarray]
    """``x -> logits`` of the ScriptModule saved at ``path``, loaded once, on CPU."""
    import torch

    with _quiet_jit():
        return torch_logits(torch.jit.load(str(path), map_location="cpu").eval())


def log_torchscript_model(
    path: str | Path, input_example: np.ndarray, artifacts: Mapping[str, ExtraArtifact] | None = None, *,
    name: str = "model",
) -> ModelInfo:
    """Log the ScriptModule at ``path`` with the ``mlflow.pytorch`` flavor (pickle format) plus ``extras/`` files.

    ``input_example`` (a small batch as the model takes it) and the model's output on it give the signature.
    """
    import mlflow
    import torch

    example = check_input(input_example, "input_example")
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu").eval()
    signature = mlflow.models.infer_signature(example, torch_logits(module)(example))
    info = mlflow.pytorch.log_model(module, name=name, signature=signature, input_example=example,
                                    serialization_format="pickle", pip_requirements=_pinned("torch", "numpy", "mlflow"))
    log_extras(info.model_id, artifacts or {})
    return info


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's "torch.jit.<fn> is deprecated" warnings (and nothing else) inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


TORCHSCRIPT = Exporter("torchscript", export_torchscript, torchscript_runner,
                       lambda path, example, extras: log_torchscript_model(path, example, extras), suffix=".pt")


def export_registered_torchscript(
    target, source_uri: str, registered_name: str, *, inputs: np.ndarray | None = None,  # noqa: ANN001
    parity_split: SplitSource | None = None, experiment: str = "dlspark", min_agreement: float = 0.99,
) -> ExportResult:
    """Trace a registered pytorch model to TorchScript and register it as a new version of ``registered_name``.

    See :func:`dlspark.export.registered.export_registered` (parameters, parity data, errors); the run logs
    ``torchscript_max_abs_diff``, ``torchscript_agreement``, ``torchscript_parity_rows`` (and accuracies).
    """
    return export_registered(target, source_uri, registered_name, TORCHSCRIPT, inputs=inputs,
                             parity_split=parity_split, experiment=experiment, min_agreement=min_agreement)
