"""Which runtime scores a registered version: the version itself, or one of its parity-checked exports.

``jobs/models.py export-onnx`` / ``export-torchscript`` register an export as a version of another model
(``<name>-onnx``, ``<name>-onnx-int8``, ``<name>-torchscript``) tagged ``dlspark.source_model`` with the version it
came from and ``dlspark.format``; the export run also measures both models' rows/s on the parity rows, in one
process with the same threads (metrics ``source_rows_per_s`` and ``<format>_rows_per_s``). Batch inference, the
stream and serving pass ``inference.runtime`` (``serve.runtime``) through :func:`choose_runtime`:

* ``auto`` (default): the lossless export (onnx, torchscript) with the best measured speed-up over the source,
  if it has one above 1; exports from before speeds were measured rank onnx before torchscript (the optimisation
  bench measured onnxruntime at 2.8x eager torch on the CNN, TorchScript at 1.1x). int8 exports change predictions,
  so ``auto`` never picks one: pin ``onnx-int8``.
* ``source``: the registered version as it is.
* ``onnx``, ``onnx-int8``, ``torchscript``: that export (the newest, when there are several), or a clear error.

The choice is pure (:func:`choose_runtime`); :func:`find_exports` asks the registry.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from dlspark.inference.model import ModelRef, ModelResolutionError

if TYPE_CHECKING:
    from dlspark.tracking import TrackingTarget

log = logging.getLogger(__name__)

SOURCE_TAG = "dlspark.source_model"    # on an exported version: the version it came from (export.registered writes it)
FORMAT_TAG = "dlspark.format"          # onnx | onnx-int8 | torchscript | tflite (the flavor does not tell them apart)
LOSSLESS = ("onnx", "torchscript")     # auto's candidates, in the order used when no speed was measured
FORMATS = (*LOSSLESS, "onnx-int8")


@dataclass(frozen=True)
class ExportCandidate:
    """One registered export of a source version, with the speeds its export run measured (None: not measured)."""

    ref: ModelRef
    format: str                        # onnx | onnx-int8 | torchscript
    rows_per_s: float | None = None
    source_rows_per_s: float | None = None

    @property
    def speedup(self) -> float | None:
        if not self.rows_per_s or not self.source_rows_per_s:
            return None
        return self.rows_per_s / self.source_rows_per_s


@dataclass(frozen=True)
class RuntimeChoice:
    """What to load: ``export`` (None = the source version itself), its format and why it was chosen."""

    export: ModelRef | None
    format: str                        # "source" or the export's format
    reason: str


class RuntimeUnavailable(ModelResolutionError):
    """A pinned runtime has no export of the version; the message says how to make one."""


def metric_prefix(fmt: str) -> str:
    """Metric name prefix of an export format (``onnx-int8`` -> ``onnx_int8``)."""
    return fmt.replace("-", "_")


def choose_runtime(requested: str, source: ModelRef, candidates: Sequence[ExportCandidate]) -> RuntimeChoice:
    """The runtime for ``source`` given ``requested`` (auto | source | a format) and its registered exports.

    Raises
    ------
    RuntimeUnavailable
        When ``requested`` is a format the version has no export in.
    ValueError
        For an unknown ``requested``.
    """
    if requested == "source":
        return RuntimeChoice(None, "source", "runtime=source")
    if requested in FORMATS:
        pinned = _newest([c for c in candidates if c.format == requested])
        if pinned is None:
            flag = " --int8" if requested == "onnx-int8" else ""
            cmd = "export-onnx" if requested.startswith("onnx") else f"export-{requested}"
            raise RuntimeUnavailable(f"runtime={requested}: {source.label} has no registered {requested} export; run "
                                     f"jobs/models.py {cmd}{flag} --source {source.uri}, or set the runtime to auto")
        return RuntimeChoice(pinned.ref, requested, f"runtime={requested} pinned")
    if requested != "auto":
        raise ValueError(f"unknown runtime {requested!r}; use auto, source or one of {list(FORMATS)}")
    lossless = [c for c in candidates if c.format in LOSSLESS]
    measured = [c for c in lossless if c.speedup is not None]
    if measured:
        best = max(measured, key=lambda c: (c.speedup or 0.0, int(c.ref.version or 0)))
        if (best.speedup or 0.0) > 1.0:
            return RuntimeChoice(best.ref, best.format, f"auto: {best.format} measured {best.speedup:.2f}x the source "
                                                        f"({best.rows_per_s:.0f} vs {best.source_rows_per_s:.0f} rows/s)")
        if len(measured) == len(lossless):
            return RuntimeChoice(None, "source", f"auto: no export is faster than the source (best {best.format} "
                                                 f"measured {best.speedup:.2f}x)")
    for fmt in LOSSLESS:
        unmeasured = _newest([c for c in lossless if c.format == fmt and c.speedup is None])
        if unmeasured is not None:
            return RuntimeChoice(unmeasured.ref, fmt, f"auto: {fmt} export (speed not measured at export; "
                                                      f"{' before '.join(LOSSLESS)} by default)")
    return RuntimeChoice(None, "source", "auto: no parity-checked export of this version")


def _newest(candidates: Sequence[ExportCandidate]) -> ExportCandidate | None:
    return max(candidates, key=lambda c: int(c.ref.version or 0), default=None)


def find_exports(target: TrackingTarget, source: ModelRef) -> list[ExportCandidate]:
    """The registered exports of ``source`` (a pinned registered version), under any registered name."""
    if source.name is None or source.version is None:
        return []
    client = target.client()
    versions: list[Any]
    try:
        versions = list(client.search_model_versions(f"tags.`{SOURCE_TAG}` = '{source.uri}'"))
    except Exception:  # noqa: BLE001 - stores without tag search: look under the default export names
        versions = []
        for fmt in FORMATS:
            try:
                versions += client.search_model_versions(f"name = '{source.name}-{fmt}'")
            except Exception:  # noqa: BLE001 - no such registered model
                continue
    out = []
    for mv in versions:
        tags = mv.tags or {}
        fmt = str(tags.get(FORMAT_TAG))
        if tags.get(SOURCE_TAG) != source.uri or fmt not in FORMATS:
            continue
        if fmt == "onnx" and str(mv.name).endswith("-int8"):   # int8 exports made before the format tag said so
            fmt = "onnx-int8"
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        ref = ModelRef(uri=f"models:/{mv.name}/{mv.version}", requested=source.requested, name=mv.name,
                       version=str(mv.version), run_id=mv.run_id)
        out.append(ExportCandidate(ref, fmt, metrics.get(f"{metric_prefix(fmt)}_rows_per_s"),
                                   metrics.get("source_rows_per_s")))
    return out


def runtime_for(target: TrackingTarget, source: ModelRef, requested: str) -> RuntimeChoice:
    """:func:`choose_runtime` over the registry's exports of ``source``; the choice is logged."""
    choice = choose_runtime(requested, source, find_exports(target, source) if requested != "source" else [])
    log.info("%s runs on %s%s (%s)", source.label, choice.format,
             f" = {choice.export.label}" if choice.export is not None else "", choice.reason)
    return choice
