"""Which registered model to score with, and everything inference needs from it.

:func:`resolve_model` turns ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run>/<path>``
or ``models:/m-<id>`` into a :class:`ModelRef` (name and version when the model is registered);
:func:`fetch_model` downloads it once into a local folder and reads its flavor, labels and preprocessing
spec (``extras/labels.json``, ``extras/preprocessing.json``, logged with the model by training), so
training and inference cannot drift apart.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

if TYPE_CHECKING:
    from dlspark.config import AppConfig
    from dlspark.tracking import TrackingTarget

FLAVORS = ("pytorch", "onnx", "keras", "tensorflow")
_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w-]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ModelResolutionError(ValueError):
    """The model URI does not name a usable model; the message says what exists."""


@dataclass(frozen=True)
class ModelRef:
    """A model, pinned: ``uri`` never moves even when an alias does (``models:/<name>/<version>``)."""

    uri: str                   # what to download: pinned to the version when registered
    requested: str             # what the user asked for (e.g. models:/x@champion)
    name: str | None           # registered model name; None for a bare run/logged-model URI
    version: str | None        # registered version; None when not registered
    run_id: str | None

    @property
    def label(self) -> str:
        """``name/version``, or the URI for unregistered models: what output rows record."""
        return f"{self.name}/{self.version}" if self.name else self.uri


@dataclass(frozen=True)
class ModelBundle:
    """A downloaded model: its folder (holding ``MLmodel``), flavor, labels and preprocessing spec."""

    ref: ModelRef
    local_dir: str
    flavor: str                        # pytorch | onnx | keras | tensorflow
    labels: tuple[str, ...]            # class names by output index
    preprocessing: Mapping[str, Any] = field(hash=False)
    train_config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    source: ModelRef | None = None     # the version asked for, when ``ref`` is an export of it chosen as the runtime
    runtime: str = "source"            # source | onnx | onnx-int8 | torchscript (dlspark.inference.runtime)
    runtime_reason: str = ""

    @property
    def kind(self) -> str:
        """``image`` or ``text``."""
        return str(self.preprocessing["kind"])

    @property
    def source_ref(self) -> ModelRef:
        """The registered version that was asked for (``ref`` itself unless an export of it runs)."""
        return self.source or self.ref

    @property
    def runtime_label(self) -> str:
        """What runs, for logs and reports: ``onnx = dlspark-x-onnx/3`` or ``source``."""
        return self.runtime if self.source is None else f"{self.runtime} = {self.ref.label}"


def model_uri_for(name_or_uri: str, alias: str = "champion") -> str:
    """``models:/<name>@<alias>`` for a bare registered-model name; URIs are returned unchanged."""
    return name_or_uri if ":/" in name_or_uri else f"models:/{name_or_uri}@{alias}"


def resolve_model(target: TrackingTarget, uri: str) -> ModelRef:
    """Pin ``uri`` to a registered version (aliases resolved now, so a moving alias cannot split a job).

    Raises
    ------
    ModelResolutionError
        Unknown model, version or alias; the message lists what the registry holds.
    """
    client = target.client()
    alias, version = _ALIAS.match(uri), _VERSION.match(uri)
    try:
        if alias:
            mv = client.get_model_version_by_alias(alias["name"], alias["alias"])
        elif version:
            mv = client.get_model_version(version["name"], version["version"])
        else:
            run = re.match(r"^runs:/(?P<run>[0-9a-f]+)/", uri)
            return ModelRef(uri=uri, requested=uri, name=None, version=None, run_id=run["run"] if run else None)
    except Exception as exc:  # noqa: BLE001 - MlflowException subclasses vary by store
        raise ModelResolutionError(f"cannot resolve model {uri!r}: {_first_line(exc)}; {_known(client, uri)}") from exc
    return ModelRef(uri=f"models:/{mv.name}/{mv.version}", requested=uri, name=mv.name, version=str(mv.version),
                    run_id=mv.run_id)


def fetch_model(target: TrackingTarget, ref: ModelRef, dst_dir: str | Path) -> ModelBundle:
    """Download ``ref`` into ``dst_dir`` (reused when already there) and read what inference needs.

    Raises
    ------
    ModelResolutionError
        When the model lacks a supported flavor or the ``extras/labels.json`` / ``preprocessing.json``
        that training logs (models logged outside ``jobs/train.py`` must carry them too).
    """
    import mlflow

    from dlspark.tracking import using_target

    dst = Path(dst_dir)
    if not (dst / "MLmodel").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with using_target(target):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(dst)))
        if local != dst:  # some stores nest the model folder one level down
            dst = local
    return read_bundle(ref, dst)


def download_model(target: TrackingTarget, ref: ModelRef) -> ModelBundle:
    """``ref`` downloaded once per machine (registered versions never change) into a temp-dir cache folder."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(f"{target.registry_uri}|{ref.uri}".encode()).hexdigest()[:16]
    return fetch_model(target, ref, Path(tempfile.gettempdir()) / "dlspark-models" / digest)


def load_model(target: TrackingTarget, uri: str, runtime: str = "source") -> ModelBundle:
    """Resolve ``uri`` to a pinned version and download it, or the export of it that ``runtime`` picks
    (``auto`` | ``source`` | a format: see :mod:`dlspark.inference.runtime`)."""
    return download_for_runtime(target, resolve_model(target, uri), runtime)


def download_for_runtime(target: TrackingTarget, ref: ModelRef, runtime: str) -> ModelBundle:
    """:func:`download_model` of ``ref``, or of the export of it that ``runtime`` picks (``bundle.source`` = ``ref``)."""
    from dataclasses import replace

    from dlspark.inference.runtime import runtime_for

    choice = runtime_for(target, ref, runtime)
    if choice.export is None:
        return replace(download_model(target, ref), runtime_reason=choice.reason)
    bundle = download_model(target, choice.export)
    return replace(bundle, source=ref, runtime=choice.format, runtime_reason=choice.reason)


def read_bundle(ref: ModelRef, model_dir: str | Path) -> ModelBundle:
    """The :class:`ModelBundle` of an already downloaded model folder."""
    folder = Path(model_dir)
    flavor = model_flavor(folder)
    labels = _read_extra(folder, "labels.json", ref).get("labels")
    pre = _read_extra(folder, "preprocessing.json", ref)
    if not labels or pre.get("kind") not in ("image", "text"):
        raise ModelResolutionError(f"{ref.requested}: extras/labels.json needs 'labels' and extras/preprocessing.json a "
                                   "'kind' of image or text; log the model with jobs/train.py")
    config = _read_extra(folder, "train_config.json", ref, required=False)
    return ModelBundle(ref=ref, local_dir=str(folder), flavor=flavor, labels=tuple(labels), preprocessing=pre,
                       train_config=config)


def model_flavor(model_dir: str | Path) -> str:
    """The first supported flavor in the folder's ``MLmodel`` file (pytorch, onnx, keras, tensorflow), or
    ``tflite`` for the ``python_function`` models that :mod:`dlspark.export.tflite` logs."""
    if not (Path(model_dir) / "MLmodel").is_file():
        raise ModelResolutionError(f"{model_dir} is not an MLflow model folder (no MLmodel file)")
    flavors = mlmodel_flavors(model_dir)
    for flavor in FLAVORS:
        if flavor in flavors:
            return flavor
    if "tflite" in (flavors.get("python_function", {}).get("artifacts") or {}):  # dlspark.export.tflite
        return "tflite"
    raise ModelResolutionError(f"{model_dir}: flavors {sorted(flavors)} include none that batch inference runs; "
                               f"log the model as one of {list(FLAVORS)} (or export it with jobs/models.py export-tflite)")


def mlmodel_flavors(model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The ``flavors`` section of ``<model_dir>/MLmodel``: ``{flavor name: its settings}``."""
    mlmodel = Path(model_dir) / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(f"{model_dir} has no MLmodel file; pass the downloaded MLflow model folder")
    flavors = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors") or {}
    return {name: conf or {} for name, conf in flavors.items()}


def _read_extra(folder: Path, name: str, ref: ModelRef, required: bool = True) -> dict[str, Any]:
    path = folder / "extras" / name
    if not path.is_file():
        if not required:
            return {}
        raise ModelResolutionError(f"{ref.requested} has no extras/{name}: inference reads the label mapping and "
                                   "preprocessing that jobs/train.py logs with every model; retrain or log them")
    return json.loads(path.read_text(encoding="utf-8"))


def _known(client: Any, uri: str) -> str:
    name = (_ALIAS.match(uri) or _VERSION.match(uri) or {"name": None})["name"]  # type: ignore[index]
    try:
        if name is None:
            return "use models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/model"
        versions = client.search_model_versions(f"name='{name}'")
        aliases = client.get_registered_model(name).aliases if versions else {}
    except Exception:  # noqa: BLE001
        return f"no registered model named {name!r} (jobs/models.py list shows what exists)"
    if not versions:
        return f"no registered model named {name!r} (jobs/models.py list shows what exists)"
    return f"{name} has versions {sorted(int(v.version) for v in versions)} and aliases {dict(aliases) or 'none'}"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def requested_model(cfg: "AppConfig") -> str:
    """``inference.model`` as a URI; null = ``models:/<mlflow.registered_model>@<inference.alias>``."""
    return cfg.model_uri(cfg.inference.model, cfg.inference.alias)


def expected_labels(bundle: ModelBundle) -> dict[str, str]:
    """Table label -> the class name the model should predict for it."""
    label_map: Mapping[str, int] | None = bundle.preprocessing.get("label_map")
    if label_map:
        return {label: bundle.labels[int(target)] for label, target in label_map.items()}
    return {label: label for label in bundle.labels}
