"""Spark side of batch inference: ship the model to executors and score a DataFrame with ``mapInArrow``.

The model folder travels once per session with ``addArchive`` (``addArtifacts`` over Spark Connect; executors need no access
to the MLflow server), each Python worker loads it once (``scoring.cached_predictor``), and Arrow batches
go straight from the JVM to the model: no pandas, no per-row Python, no pickling of rows.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import shutil
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from pyspark.sql import functions as F

from dlspark.inference.inputs import ingest_text_fallback
from dlspark.inference.model import ModelBundle, expected_labels
from dlspark.inference.scoring import PREDICTION_DDL, ScoringSpec, score_batches
from dlspark.spark.connect import executors_share_files, is_connect, session_id

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.resource import ResourceProfile
    from pyspark.sql import DataFrame, SparkSession

    from dlspark.config import AppConfig

log = logging.getLogger(__name__)
_SHIPPED: set[tuple[str, str]] = set()  # (session id, archive) pairs shipped by this process

INPUT_COLUMNS = {"image": ("pixels", "shape"), "tokens": ("input_ids", "attention_mask")}


def scoring_spec(bundle: ModelBundle, **options: object) -> ScoringSpec:
    """A :class:`ScoringSpec` for a fetched model; ``options`` set the other ScoringSpec fields."""
    return ScoringSpec(cache_key=bundle.ref.uri, flavor=bundle.flavor, labels=bundle.labels,
                       preprocessing=dict(bundle.preprocessing), model_dir=bundle.local_dir, **options)  # type: ignore[arg-type]


def ship_model(spark: SparkSession, spec: ScoringSpec) -> ScoringSpec:
    """``spec`` with its model folder shipped to every executor, unless they read this machine's files anyway
    (a ``local`` master of a classic session or of a Connect server this process started).

    A classic session ships with ``SparkContext.addArchive``, a Spark Connect one with
    ``spark.addArtifacts(..., archive=True)`` (a remote server reads none of the client's folders); executors find
    the unpacked folder with ``SparkFiles.get`` either way. The archive name carries a hash of the folder's
    contents, so a new model version is a new archive and a rerun in the same session reuses the shipped one.
    """
    if spec.model_dir is None or executors_share_files(spark):
        return spec
    connect = is_connect(spark)
    folder = Path(spec.model_dir)
    name = f"dlspark-model-{_folder_digest(folder)}.zip"
    key = (session_id(spark), name)
    if key not in _SHIPPED:
        staging = Path(tempfile.mkdtemp(prefix="dlspark-ship-"))
        archive = shutil.make_archive(str(staging / name[:-4]), "zip", root_dir=folder)
        if connect:
            spark.addArtifacts(archive, archive=True)  # uploaded now: the staged copy can go
            shutil.rmtree(staging, ignore_errors=True)
        else:
            spark.sparkContext.addArchive(archive)  # executors fetch it from the driver later: keep it
        _SHIPPED.add(key)
        log.info("shipped model %s to executors as %s", spec.cache_key, name)
    return replace(spec, archive=name, model_dir=None)  # executors read the shipped copy only


def score_dataframe(df: DataFrame, spec: ScoringSpec, *, profile: ResourceProfile | None = None) -> DataFrame:
    """One output row per input row: ``spec.passthrough`` columns, then prediction columns (see ``PREDICTION_DDL``).

    Only the model's input columns and the passthrough columns reach Python. With ``profile`` (a stage-level
    ``ResourceProfile``, e.g. one GPU per task), the scoring stage runs with those resources while the rest
    of the application keeps its defaults; this needs pyspark >= 4.0 (``mapInArrow(profile=...)``), and on
    older pyspark the session's task resources apply, with a warning.
    """
    kwargs: dict[str, Any] = {}
    if profile is not None:
        if "profile" in inspect.signature(df.mapInArrow).parameters:
            kwargs["profile"] = profile
        else:
            log.warning("stage-level resource profiles need pyspark >= 4.0 (mapInArrow(profile=...)); "
                        "scoring runs with the session's task resources (spark.task_gpus)")
    return map_model_batches(df, spec, partial(score_batches, spec=spec), PREDICTION_DDL, **kwargs)


def map_model_batches(df: DataFrame, spec: ScoringSpec, fn: Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]],
                      output_ddl: str, **kwargs: Any) -> DataFrame:
    """``mapInArrow(fn)`` over the passthrough and model input columns of ``df`` only; the output is the passthrough
    columns (their types kept) followed by ``output_ddl`` (scoring, explanations, embeddings)."""
    schema = ", ".join([f"`{f.name}` {f.dataType.simpleString()}" for f in df.select(*spec.passthrough).schema.fields]
                       + [output_ddl])
    wanted = list(dict.fromkeys([*spec.passthrough, *input_columns(df.columns, spec)]))
    return df.select(*wanted).mapInArrow(fn, schema, **kwargs)


def input_columns(columns: Sequence[str], spec: ScoringSpec) -> list[str]:
    """The input columns ``spec`` reads that ``columns`` holds (image ``shape`` is optional); errors name the fix."""
    if spec.kind == "image":
        pixels = str(spec.preprocessing.get("input_column", "pixels"))
        required, optional = [pixels], ["shape"]
    elif spec.text_mode == "text":
        required, optional = [spec.text_column], []
    else:
        required, optional = list(INPUT_COLUMNS["tokens"]), []
    missing = [c for c in required if c not in columns]
    if missing:
        hint = ("set inference.text_mode to text and inference.text_column" if spec.kind == "text"
                else "score a table written by jobs/ingest_images.py")
        raise ValueError(f"the {spec.kind} model reads column(s) {missing}, which the input lacks (it has {list(columns)}); {hint}")
    return required + [c for c in optional if c in columns]


def resource_profile(task_cpus: int | None, task_gpus: float) -> ResourceProfile | None:
    """A stage-level profile asking ``task_cpus`` cores and ``task_gpus`` GPUs per scoring task (None if neither)."""
    if not task_cpus and not task_gpus:
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    requests = TaskResourceRequests()
    if task_cpus:
        requests.cpus(int(task_cpus))
    if task_gpus:
        requests.resource("gpu", float(task_gpus))
    return ResourceProfileBuilder().require(requests).build


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


DEFAULT_PASSTHROUGH = ("record_id", "sha256", "source_path", "split", "label", "label_index")


def score_rows(spark: SparkSession, df: DataFrame, cfg: "AppConfig", bundle: ModelBundle) -> DataFrame:
    """``df`` scored by ``bundle`` with the ``inference`` settings (passthrough, batch size, device ...)."""
    icfg = cfg.inference
    passthrough = tuple(icfg.passthrough) if icfg.passthrough is not None else \
        tuple(c for c in DEFAULT_PASSTHROUGH if c in df.columns)
    missing = [c for c in passthrough if c not in df.columns]
    if missing:
        raise ValueError(f"inference.passthrough names column(s) {missing} that the input lacks; it has {df.columns}")
    fallback = ingest_text_fallback(cfg.ingest_text) if icfg.text_mode == "text" else None
    spec = scoring_spec(bundle, passthrough=passthrough, batch_size=icfg.batch_size, top_k=icfg.top_k, device=icfg.device,
                        max_batch_tokens=icfg.max_batch_tokens,
                        amp=icfg.amp, text_mode=icfg.text_mode, text_column=icfg.text_column, text_fallback=fallback)
    return score_dataframe(df, ship_model(spark, spec), profile=resource_profile(icfg.task_cpus, icfg.task_gpus))


def source_torch_spec(spark: SparkSession, cfg: "AppConfig", uri: str, *, passthrough: Sequence[str], batch_size: int,
                      what: str) -> tuple[ModelBundle, ScoringSpec]:
    """For work on the eager module itself on CPU (explanations, embeddings): the pytorch source version of ``uri``
    (never an export: ``inference.runtime`` does not apply), and its spec with the ``inference`` text settings,
    float32, shipped to the executors.

    Raises
    ------
    ConfigError
        When the version is not a pytorch model (``what`` names the job for the message).
    """
    from dlspark.config import ConfigError
    from dlspark.inference.model import load_model
    from dlspark.tracking import resolve_tracking

    bundle = load_model(resolve_tracking(cfg.mlflow, cfg.paths.data_dir), uri, runtime="source")
    if bundle.flavor != "pytorch":
        raise ConfigError(f"{what}.model: {bundle.ref.label} is a {bundle.flavor} model; {what} needs a registered "
                          "pytorch model (Keras models are not covered)")
    icfg = cfg.inference
    fallback = ingest_text_fallback(cfg.ingest_text) if icfg.text_mode == "text" else None
    spec = scoring_spec(bundle, passthrough=tuple(passthrough), batch_size=batch_size, device="cpu", amp=False,
                        text_mode=icfg.text_mode, text_column=icfg.text_column, text_fallback=fallback)
    return bundle, ship_model(spark, spec)


def label_accuracy(predictions: DataFrame, bundle: ModelBundle) -> tuple[float | None, int]:
    """(accuracy, labelled rows) over rows whose ``label`` maps to one of the model's classes.

    A label maps through the training label map when there is one (e.g. sentiment without ``neutral``),
    else it is a class name itself. Rows with an error count as wrong.
    """
    if "label" not in predictions.columns:
        return None, 0
    expected = expected_labels(bundle)
    mapping = F.create_map(*[F.lit(x) for pair in expected.items() for x in pair])
    expected_class = F.try_element_at(mapping, F.col("label")).alias("expected")  # null for a label of no class
    labelled = predictions.select(expected_class, "prediction").where(F.col("expected").isNotNull())
    row = labelled.agg(F.count(F.lit(1)).alias("n"),
                       F.sum(F.when(F.col("prediction") == F.col("expected"), 1).otherwise(0)).alias("right")).first()
    n = int(row["n"]) if row is not None else 0  # a global aggregate always has its one row
    return (int(row["right"]) / n if row is not None and n else None), n
