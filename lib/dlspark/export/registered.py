"""Export a registered pytorch model to another format, check it, register it: the flow ONNX and TorchScript share.

The source version (aliases resolved once, so a moving alias cannot split the export) and its ``extras/`` are
downloaded, rebuilt as an eager module, exported, checked for parity (on the training table's test split when
one is given and exists, else on the source's logged input example), logged with the parity metrics in a new
run, and registered with :func:`register_and_promote` under the source version's promotion metric. The new
version's tag ``dlspark.source_model`` names the source version, which makes reruns idempotent; ``dlspark.format``
names the format. Each format is an :class:`Exporter` (see ``export.onnx`` and ``export.torchscript``).
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from dlspark.export.parity import (
    ParityError,
    ParityReport,
    SplitSource,
    accuracy,
    batched_logits,
    compare_logits,
    read_split,
)
from dlspark.inference.runtime import FORMAT_TAG, SOURCE_TAG  # the tags' one home: the runtime choice reads them
from dlspark.tracking.model_logging import EXTRAS_DIR, ExtraArtifact
from dlspark.tracking.registry import METRIC_NAME_TAG, METRIC_VALUE_TAG, register_and_promote
from dlspark.tracking.target import TrackingError, TrackingTarget, start_run

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)

Logits = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Exporter:
    """One export format: how to write it, run it and log it."""

    flavor: str                                                   # "onnx" | "torchscript": metric prefix
    export: Callable[[Any, np.ndarray, Path], Path]               # (eager module, trace example, file) -> file
    runner: Callable[[Path], Logits]                              # exported file -> inputs-to-logits function
    log_model: Callable[[Path, np.ndarray, Mapping[str, ExtraArtifact]], "ModelInfo"]
    suffix: str = ".bin"                                          # the exported file's extension
    format: str | None = None                                     # FORMAT_TAG value (None = flavor), e.g. onnx-int8
    calibrated: bool = False                                      # export(..., calibration=rows): static quantization
    # The source: (downloaded model folder, uri) -> (what ``export`` takes, inputs-to-logits reference); default:
    # the eager torch module of a pytorch-flavor model. TFLite: the Keras SavedModel folder and its serve function.
    load_source: Callable[[Path, str], tuple[Any, Logits]] | None = None
    channels_last: bool = False                                   # parity rows from a split as NHWC (Keras)
    example: Callable[[Path, str], np.ndarray] | None = None      # the logged example's reader (default MLflow's)
    tags: Mapping[str, str] = field(default_factory=dict)         # further version tags, also matched on rerun
    file_metrics: Callable[[Path], dict[str, float]] | None = None  # e.g. the exported file's size

    @property
    def format_tag(self) -> str:
        return self.format or self.flavor

    @property
    def prefix(self) -> str:
        """Metric name prefix: the format with ``-`` as ``_`` (``onnx_int8_agreement``)."""
        return self.format_tag.replace("-", "_")


@dataclass(frozen=True)
class ExportResult:
    """Outcome of :func:`export_registered`."""

    model_uri: str       # models:/<registered_name>/<version>
    version: str
    promoted: bool       # whether the new version became champion
    run_id: str
    parity: ParityReport


def export_registered(
    target: TrackingTarget, source_uri: str, registered_name: str, exporter: Exporter, *,
    inputs: np.ndarray | None = None, parity_split: SplitSource | None = None, experiment: str = "dlspark",
    min_agreement: float = 0.99, max_accuracy_drop: float | None = None, calibration_split: SplitSource | None = None,
) -> ExportResult:
    """Export the registered pytorch model ``source_uri`` with ``exporter``; register it as ``registered_name``.

    Parameters
    ----------
    inputs
        Rows in the servable model's input form to check parity on (overrides ``parity_split``).
    parity_split
        The table split to check parity on, every row of it; when the table or split is missing, the source's
        logged input example is used instead (logged as a warning; the run's ``parity_data`` param says which).
    min_agreement
        Fewest rows, as a fraction, that must get the source's class; below it nothing is registered.
    max_accuracy_drop
        Lossy exports (int8): the most the export's accuracy on the labelled parity rows may fall below the
        source's (e.g. 0.01 = one point); it then needs labelled rows (a parity split).
    calibration_split
        Calibrated exporters (static int8): the split whose first ``CALIBRATION_ROWS`` rows set the activation
        ranges (default: the parity rows; the train split keeps the rows the gate measures on out of calibration).

    Both models' speed on the parity rows (rows/s, one process, the same threads, after one warm-up batch) is
    logged as ``source_rows_per_s`` and ``<format>_rows_per_s``: ``dlspark.inference.runtime`` picks by it.

    Raises
    ------
    TrackingError
        When the source is not a registered version with a promotion metric, or there are no rows to check.
    dlspark.export.parity.ParityError
        When the export disagrees with the source (the run is then marked FAILED and nothing is registered).
    """
    import mlflow

    pinned, metric_name, metric_value = resolve_source(target, source_uri)
    fmt, prefix = exporter.format_tag, exporter.prefix
    done = existing_export(target, registered_name, pinned, prefix, match=exporter.tags)
    if done is not None:
        log.info("%s was already exported to %s as %s", pinned, fmt, done.model_uri)
        return done
    tags = {SOURCE_TAG: pinned, FORMAT_TAG: fmt, **exporter.tags}
    with start_run(target, experiment, f"{fmt}-export {pinned}", tags=tags) as run, \
            tempfile.TemporaryDirectory(prefix=f"dlspark-{prefix}-") as tmp:
        # start_run points the fluent API (models:/ resolution included) at target
        source_dir = Path(mlflow.artifacts.download_artifacts(pinned, dst_path=str(Path(tmp) / "source")))
        model, reference = (exporter.load_source or load_torch_source)(source_dir, source_uri)
        rows, labels, described = parity_rows(source_dir, source_uri, inputs, parity_split,
                                              channels_last=exporter.channels_last, example=exporter.example)
        target_file = Path(tmp) / f"model{exporter.suffix}"
        if exporter.calibrated:
            calibration = calibration_rows(source_dir, calibration_split, rows)
            path = exporter.export(model, trace_example(rows), target_file, calibration=calibration)  # type: ignore[call-arg]
        else:
            path = exporter.export(model, trace_example(rows), target_file)
        expected, source_rate = timed_logits(reference, rows)
        got, export_rate = timed_logits(exporter.runner(path), rows)
        parity = compare_logits(expected, got, min_agreement=min_agreement, what=f"{fmt} export {path.name}")
        accuracies = export_accuracies(prefix, expected, got, labels)
        check_accuracy_drop(accuracies, prefix, max_accuracy_drop, described)
        mlflow.log_param("parity_data", described)
        mlflow.log_metrics({f"{prefix}_max_abs_diff": parity.max_abs_diff, f"{prefix}_agreement": parity.agreement,
                            f"{prefix}_parity_rows": parity.rows, "source_rows_per_s": source_rate,
                            f"{prefix}_rows_per_s": export_rate, **accuracies,
                            **(exporter.file_metrics(path) if exporter.file_metrics else {})})
        exporter.log_model(path, rows[:4], extras_in(source_dir))
    result = register_and_promote(target, registered_name, run.info.run_id, "model", metric_name, metric_value)
    for key, value in tags.items():
        target.client().set_model_version_tag(registered_name, result.version, key, value)
    log.info("registered %s export of %s as %s version %s (parity on %s: %s; %.0f rows/s vs the source's %.0f)",
             fmt, pinned, registered_name, result.version, described, parity, export_rate, source_rate)
    return ExportResult(f"models:/{registered_name}/{result.version}", result.version, result.promoted,
                        run.info.run_id, parity)


def load_torch_source(source_dir: Path, source_uri: str) -> tuple[Any, Logits]:
    """The eager torch module of a downloaded pytorch-flavor model (built from ``extras/model_spec.json`` when it
    says how) and its logits function."""
    from dlspark.inference.predictors import load_torch_module

    model = load_torch_module(str(source_dir))
    return model, torch_logits(model)


def timed_logits(fn: Logits, rows: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, float]:
    """(:func:`batched_logits` of ``rows``, its rows/s), after one untimed warm-up batch."""
    import time

    fn(np.ascontiguousarray(rows[:batch_size]))
    start = time.perf_counter()
    out = batched_logits(fn, rows, batch_size)
    return out, len(rows) / max(time.perf_counter() - start, 1e-9)


def check_accuracy_drop(accuracies: Mapping[str, float], prefix: str, max_drop: float | None, described: str) -> None:
    """ParityError when the export's accuracy falls more than ``max_drop`` below the source's (None: no check)."""
    if max_drop is None:
        return
    if "source_accuracy" not in accuracies:
        raise ParityError(f"a lossy export needs labelled rows to check its accuracy drop on; {described} has no "
                          "labels: pass a parity split of the training table (--parity-split test)")
    drop = accuracies["source_accuracy"] - accuracies[f"{prefix}_accuracy"]
    if drop > max_drop:
        raise ParityError(f"the {prefix} export's accuracy {accuracies[f'{prefix}_accuracy']:.4f} is {drop:.4f} below the "
                          f"source's {accuracies['source_accuracy']:.4f} on {described} (at most {max_drop} allowed); "
                          "nothing registered: keep the float export")


def existing_export(target: TrackingTarget, registered_name: str, pinned: str, flavor: str = "onnx",
                    match: Mapping[str, str] | None = None) -> ExportResult | None:
    """The version of ``registered_name`` already exported from ``pinned`` (reruns register nothing new), if any.

    ``match``: further version tags it must carry (e.g. the TFLite quantization)."""
    client = target.client()
    try:
        versions = client.search_model_versions(f"name='{registered_name}'")
    except Exception:  # noqa: BLE001 - no such registered model yet
        return None
    wanted = {SOURCE_TAG: pinned, **(match or {})}
    for mv in versions:
        tags = mv.tags or {}
        if all(tags.get(key) == value for key, value in wanted.items()):
            metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
            parity = ParityReport(rows=int(metrics.get(f"{flavor}_parity_rows", 0)),
                                  max_abs_diff=float(metrics.get(f"{flavor}_max_abs_diff", float("nan"))),
                                  agreement=float(metrics.get(f"{flavor}_agreement", float("nan"))))
            champion = client.get_registered_model(registered_name).aliases.get("champion")
            return ExportResult(f"models:/{registered_name}/{mv.version}", str(mv.version),
                                str(champion) == str(mv.version), mv.run_id or "", parity)
    return None


def parity_rows(source_dir: Path, source_uri: str, inputs: np.ndarray | None, split: SplitSource | None, *,
                channels_last: bool = False,
                example: Callable[[Path, str], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(rows, labels (-1: unknown), description) to check parity on: ``inputs``, else ``split``, else the example.

    ``channels_last`` lays split images out NHWC (Keras) instead of NCHW; ``example`` reads the logged example
    (default :func:`logged_example`, the MLflow input example)."""
    from dlspark.feed.spec import FeedError
    from dlspark.tables import TableError

    if inputs is not None:
        return inputs, np.full(len(inputs), -1, np.int64), f"given inputs ({len(inputs)} rows)"
    if split is not None:
        try:
            data = read_split(split, read_extra_json(source_dir, "preprocessing.json"))  # images NCHW
            rows = np.ascontiguousarray(data.inputs.transpose(0, 2, 3, 1)) if channels_last else data.inputs
            return rows, data.labels, data.description
        except (FeedError, TableError, FileNotFoundError) as exc:
            log.warning("no %s split to check parity on (%s); checking the logged input example instead",
                        split.split, exc)
    rows = (example or logged_example)(source_dir, source_uri)
    return rows, np.full(len(rows), -1, np.int64), f"the logged input example ({len(rows)} rows)"


CALIBRATION_ROWS = 512


def calibration_rows(source_dir: Path, split: SplitSource | None, fallback: np.ndarray) -> np.ndarray:
    """The first :data:`CALIBRATION_ROWS` rows of ``split`` in the model's input form, else of ``fallback``."""
    if split is not None:
        rows, _, described = parity_rows(source_dir, "", None, split, example=lambda *_: fallback)
        mlflow_param("calibration_data", f"first {min(len(rows), CALIBRATION_ROWS)} rows of {described}")
        return np.ascontiguousarray(rows[:CALIBRATION_ROWS])
    mlflow_param("calibration_data", f"first {min(len(fallback), CALIBRATION_ROWS)} parity rows")
    return np.ascontiguousarray(fallback[:CALIBRATION_ROWS])


def mlflow_param(key: str, value: str) -> None:
    import mlflow

    mlflow.log_param(key, value)


def trace_example(rows: np.ndarray, n: int = 4) -> np.ndarray:
    """A few rows to trace with. Text gets one more row, the longest one with its second half made padding
    (mask 0), so that a tracer never sees an all-ones mask only (transformers may then drop the mask)."""
    x = np.ascontiguousarray(rows[:n])
    if x.ndim != 3 or x.shape[2] < 2:
        return x
    longest = int(np.argmax((rows[:, 1] != 0).sum(axis=1)))
    padded = rows[longest:longest + 1].copy()
    padded[:, :, x.shape[2] // 2:] = 0
    return np.concatenate([x, padded])


def torch_logits(model: Any) -> Logits:
    """``inputs -> logits`` of a torch module on CPU, without autograd."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return run


def resolve_source(target: TrackingTarget, source_uri: str) -> tuple[str, str, float]:
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
                            "to register the export by; register the source with register_and_promote")
    return ref.uri, tags[METRIC_NAME_TAG], float(tags[METRIC_VALUE_TAG])


def logged_example(model_dir: Path, source_uri: str) -> np.ndarray:
    """The input example logged with the model (float32 images or int64 stacked tokens)."""
    from mlflow.models import Model

    example = Model.load(str(model_dir)).load_input_example(str(model_dir))
    if example is None:
        raise TrackingError(f"{source_uri} was logged without an input example; pass inputs= (a batch as the "
                            "model takes it) or a parity split to check the export against")
    array = np.asarray(example)
    return np.ascontiguousarray(array, np.int64 if array.ndim == 3 else np.float32)


def read_extra_json(model_dir: Path, name: str) -> dict:
    path = Path(model_dir) / EXTRAS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; log the model with its extras (dlspark.tracking.log_torch_model)")
    return json.loads(path.read_text(encoding="utf-8"))


def extras_in(model_dir: Path) -> dict[str, ExtraArtifact]:
    """``{file name: path}`` of the files under ``<model_dir>/extras/``."""
    folder = model_dir / EXTRAS_DIR
    return {f.name: f for f in sorted(folder.iterdir()) if f.is_file()} if folder.is_dir() else {}


def export_accuracies(flavor: str, expected: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``source_accuracy`` and ``<flavor>_accuracy`` of the two models' logits, or nothing when rows are unlabelled."""
    source, export = accuracy(expected, labels), accuracy(got, labels)
    return {} if source is None or export is None else {"source_accuracy": source, f"{flavor}_accuracy": export}
