"""Log trained models to the active MLflow run: PyTorch flavor, or Keras 3 exported as a TF SavedModel.

Both carry a signature inferred from an input example and the model's output on it, the example itself,
and extra files (label mapping, preprocessing spec) under ``extras/`` in the model's own artifacts, so a
registered version holds everything inference needs.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Union

import numpy as np

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)

ExtraArtifact = Union[str, Path, Mapping[str, Any], list]
EXTRAS_DIR = "extras"


def log_torch_model(
    model: Any, input_example: np.ndarray, artifacts: Mapping[str, ExtraArtifact] | None = None, *,
    name: str = "model", pip_requirements: list[str] | None = None,
) -> ModelInfo:
    """Log a ``torch.nn.Module`` with the pytorch flavor to the active run.

    Parameters
    ----------
    model
        The trained module; put in eval mode to compute the example's output for the signature.
    input_example
        A small batch exactly as the model takes it (e.g. float32 ``[B, C, H, W]``).
    artifacts
        ``{file name: local path | JSON-able object}``, stored under ``<model>/extras/``
        (e.g. ``{"labels.json": {"labels": {...}}, "preprocessing.json": spec}``).
    name
        The model's name in the run; with the run id, what :func:`register_and_promote` takes.
    pip_requirements
        Defaults to pinned torch, numpy and mlflow (skips MLflow's slow requirement inference).

    Returns
    -------
    mlflow.models.model.ModelInfo
        ``model_uri`` (``models:/<model_id>``), ``model_id``, ``signature`` ...
    """
    import mlflow
    import torch

    example = _check_example(input_example)
    model.eval()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).cpu().numpy()
    signature = mlflow.models.infer_signature(example, output)
    requirements = pip_requirements or _pinned("torch", "numpy", "mlflow")
    info = mlflow.pytorch.log_model(model, name=name, signature=signature, input_example=example,
                                    pip_requirements=requirements)
    log_extras(info.model_id, artifacts or {})
    return info


def log_keras_model(
    model: Any, input_example: np.ndarray, artifacts: Mapping[str, ExtraArtifact] | None = None, *,
    name: str = "model", pip_requirements: list[str] | None = None,
) -> ModelInfo:
    """Log a Keras 3 model, exported as a TF SavedModel (``mlflow.keras`` flavor, ``save_exported_model``).

    Parameters are those of :func:`log_torch_model`; ``input_example`` is in the Keras model's layout
    (e.g. float32 ``[B, H, W, C]``) and is stored as ``extras/input_example.json``. Loading back:
    ``mlflow.pyfunc.load_model(uri).predict(x)``, or the SavedModel under ``<model>/data/model`` with
    ``tf.saved_model.load``.
    """
    import mlflow

    example = _check_example(input_example)
    output = np.asarray(model(example, training=False))
    signature = mlflow.models.infer_signature(example, output)
    requirements = pip_requirements or _pinned("tensorflow-cpu", "keras", "numpy", "mlflow")
    # mlflow 3.17's keras flavor writes the input example before it creates the model folder (FileNotFoundError),
    # so the example goes under extras/ instead of into the MLmodel file; the signature is still inferred from it.
    info = mlflow.keras.log_model(model, name=name, save_exported_model=True, signature=signature,
                                  pip_requirements=requirements)
    log_extras(info.model_id, {**(artifacts or {}), "input_example.json": example.tolist()})
    return info


def stage_extras(artifacts: Mapping[str, ExtraArtifact], folder: Path) -> list[Path]:
    """Write ``artifacts`` into ``folder``: objects as JSON, paths copied; returns the written files.

    Raises
    ------
    FileNotFoundError
        When a path value does not exist.
    ValueError
        When a name is not a plain file name.
    """
    written = []
    for file_name, value in artifacts.items():
        if not file_name or Path(file_name).name != file_name:
            raise ValueError(f"extra artifact name {file_name!r} must be a plain file name like 'labels.json'")
        dest = folder / file_name
        if isinstance(value, (str, Path)):
            if not Path(value).is_file():
                raise FileNotFoundError(f"extra artifact {file_name!r}: no such file {value}")
            shutil.copyfile(value, dest)
        else:
            dest.write_text(json.dumps(value, indent=2, sort_keys=True, default=str), encoding="utf-8")
        written.append(dest)
    return written


def log_extras(model_id: str, artifacts: Mapping[str, ExtraArtifact]) -> None:
    """Store ``artifacts`` (as :func:`stage_extras` takes them) under ``extras/`` of logged model ``model_id``."""
    if not artifacts:
        return
    import mlflow

    with tempfile.TemporaryDirectory(prefix="dlspark-extras-") as tmp:
        stage_extras(artifacts, Path(tmp))
        mlflow.MlflowClient().log_model_artifacts(model_id, tmp, EXTRAS_DIR)


def _check_example(example: Any) -> np.ndarray:
    if not isinstance(example, np.ndarray) or example.ndim < 1 or len(example) == 0:
        raise ValueError(f"input_example must be a non-empty numpy batch, got {type(example).__name__} "
                         f"{getattr(example, 'shape', '')}; pass e.g. the first batch's x[:4]")
    return np.ascontiguousarray(example)


def _pinned(*packages: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins
