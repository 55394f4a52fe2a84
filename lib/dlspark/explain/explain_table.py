"""Explanations of a table: per-row Integrated Gradients attributions of a registered torch model over a table (a
seeded sample or every row), computed on the executors -> an explanations table + an HTML page + an MLflow run.
What ``jobs/explain.py`` runs, and batch inference with ``inference.explain``.

Input: ``explain.input`` (null: ``inference.input``, else ``train.table``), the ``explain.split`` rows, ``explain.rows``
of them at random (seeded; null = all). The model: ``explain.model`` (null: ``inference.model``, else the registered
model's ``inference.alias``), always its pytorch source (an ONNX runtime has no gradients). Output: one row per input
row in ``explain.output`` (see ``dlspark.explain.spark_explain``), with ``run_id``; the page shows, per predicted
class, the ``explain.per_class`` rows whose attributions push hardest toward it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql import Window
from pyspark.sql import functions as F

from dlspark.config import AppConfig, ConfigError
from dlspark.explain.report import overlay_png, png_img, render_page, token_html
from dlspark.explain.spark_explain import explain_dataframe
from dlspark.filesystem import write_text
from dlspark.inference.model import ModelBundle
from dlspark.inference.spark_scoring import DEFAULT_PASSTHROUGH, source_torch_spec
from dlspark.paths import resolve_path
from dlspark.spark.connect import default_parallelism
from dlspark.tables import read_table, write_table
from dlspark.tracking import log_job_run, resolve_tracking

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainReport:
    """What one explanation run did and where it wrote it."""

    run_id: str
    model: str
    rows: int
    explained: int
    errors: int
    steps: int
    seconds: float
    output: str
    report: str
    mlflow_run_id: str

    @property
    def rows_per_s(self) -> float:
        return self.explained / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        return (f"{self.model}: {self.explained} of {self.rows} rows explained ({self.errors} refused), IG {self.steps} steps, "
                f"{self.seconds:.1f} s ({self.rows_per_s:.1f} rows/s); table {self.output}; report {self.report}")


def explain_table(spark: SparkSession, cfg: AppConfig, run_id: str) -> ExplainReport:
    """Explain ``explain.rows`` rows of the input with the model; write the table, the page and an MLflow run."""
    ecfg = cfg.explain
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    input_uri = resolve_path(cfg.paths.data_dir, cfg.explain_input)
    table = read_table(spark, input_uri, fmt=cfg.inference.input_format).df
    bundle, spec = source_torch_spec(spark, cfg, cfg.model_uri(ecfg.model or cfg.inference.model, cfg.inference.alias),
                                     passthrough=[c for c in (*DEFAULT_PASSTHROUGH, "text") if c in table.columns],
                                     batch_size=ecfg.batch_size, what="explain")
    df = select_rows(table, cfg)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    out = explain_dataframe(df, spec, ecfg.steps).withColumn("run_id", F.lit(run_id)).withColumn("explained_at", F.lit(now))
    output = resolve_path(cfg.paths.data_dir, cfg.explanations_output(bundle.ref.name))
    t0 = time.perf_counter()
    write_table(out, output, fmt=cfg.inference.format, mode="append", delta_writer=cfg.spark.delta_writer)
    seconds = time.perf_counter() - t0
    written = read_table(spark, output, fmt=cfg.inference.format).df.where(F.col("run_id") == run_id)
    counts = written.agg(F.count(F.lit(1)).alias("rows"), F.count("prediction").alias("explained"),
                         F.avg("convergence").alias("convergence")).first()
    assert counts is not None                      # an aggregate without grouping has one row
    rows, explained = int(counts["rows"]), int(counts["explained"])
    report_path = f"{resolve_path(cfg.paths.data_dir, ecfg.report_dir).rstrip('/')}/{run_id}/report.html"
    facts = {"run id": run_id, "model": bundle.ref.label, "input": input_uri, "split": ecfg.split or "all",
             "rows": rows, "explained": explained, "refused (see the error column)": rows - explained,
             "method": f"Integrated Gradients (Captum), {ecfg.steps} steps, "
                       f"{'black-image' if bundle.kind == 'image' else 'padding-token'} baseline",
             "mean convergence error": f"{float(counts['convergence'] or 0):.4f}", "seconds": f"{seconds:.1f}",
             "rows/s": f"{explained / seconds if seconds else 0:.2f}"}
    write_text(report_path, render_page(f"Explanations {run_id}", facts, class_sections(spark, written, bundle, cfg)))
    mlflow_run = _log_mlflow(cfg, target, run_id, facts, report_path, explained, seconds)
    report = ExplainReport(run_id, bundle.ref.label, rows, explained, rows - explained, ecfg.steps, seconds, output,
                           report_path, mlflow_run)
    log.info("%s", report.describe())
    return report


def select_rows(df: DataFrame, cfg: AppConfig) -> DataFrame:
    """The ``explain.split`` rows, then ``explain.rows`` of them chosen at random (seeded; null = all)."""
    ecfg = cfg.explain
    if ecfg.split:
        if "split" not in df.columns:
            raise ConfigError(f"explain.split={ecfg.split}: the input has no split column; set explain.split: null")
        df = df.where(F.col("split") == ecfg.split)
    if ecfg.rows is None:
        return df
    # sample a few times the rows wanted before the sort, so a large table is not shuffled whole; then spread the
    # rows over the cores again (a limit leaves them in one partition)
    total = df.count()
    fraction = min(1.0, 3.0 * ecfg.rows / max(total, 1))
    picked = df.sample(fraction=fraction, seed=ecfg.seed) if fraction < 1.0 else df
    picked = picked.withColumn("_r", F.rand(ecfg.seed)).orderBy("_r").limit(ecfg.rows).drop("_r")
    return picked.repartition(max(1, min(default_parallelism(df.sparkSession), -(-ecfg.rows // ecfg.batch_size))))


def class_sections(spark: SparkSession, written: DataFrame, bundle: ModelBundle, cfg: AppConfig) -> dict[str, str]:
    """Per predicted class, the ``explain.per_class`` rows with the most attribution toward it (summed positive
    scores), as a picture grid (images, pixels fetched from the input by ``sha256``) or highlighted texts."""
    strength = F.aggregate("attributions", F.lit(0.0), lambda acc, x: acc + F.greatest(x, F.lit(0.0)))
    ranked = (written.where(F.col("prediction").isNotNull()).withColumn("strength", strength)
              .withColumn("_n", F.row_number().over(Window.partitionBy("prediction").orderBy(F.desc("strength"))))
              .where(F.col("_n") <= cfg.explain.per_class).collect())
    by_class: dict[str, list[Any]] = {}
    for r in ranked:
        by_class.setdefault(r["prediction"], []).append(r)
    pixels = _pixels(spark, [r["sha256"] for r in ranked], cfg) if bundle.kind == "image" and ranked else {}
    sections = {}
    for label in bundle.labels:
        picked = sorted(by_class.get(label, []), key=lambda r: -r["strength"])
        if not picked:
            continue
        title = f"predicted {label}"
        if bundle.kind == "image":
            shape = bundle.preprocessing["image_shape"]
            usable = [r for r in picked if r["sha256"] in pixels]
            images = [np.frombuffer(pixels[r["sha256"]], np.uint8).reshape(shape) for r in usable]
            maps = [np.asarray(r["attributions"], np.float32).reshape(r["attribution_shape"]) for r in usable]
            titles = [f"p={r['probability']:.2f} label={r.asDict().get('label', '?')}" for r in usable]
            sections[title] = png_img(overlay_png(images, maps, titles), title) if usable else "(no pixels found)"
        else:
            lines = [f"<tr><td>{r['probability']:.2f}</td><td>{r.asDict().get('label') or ''}</td><td>"
                     f"{token_html(r['tokens'] or [str(i) for i in range(len(r['attributions']))], r['attributions'])}</td></tr>"
                     for r in picked]
            sections[title] = f"<table><tr><th>p</th><th>label</th><th>tokens</th></tr>{''.join(lines)}</table>"
    return sections


def _pixels(spark: SparkSession, keys: list[str], cfg: AppConfig) -> dict[str, bytes]:
    df = read_table(spark, resolve_path(cfg.paths.data_dir, cfg.explain_input), fmt=cfg.inference.input_format).df
    rows = df.where(F.col("sha256").isin(keys)).select("sha256", "pixels").dropDuplicates(["sha256"]).collect()
    return {r["sha256"]: bytes(r["pixels"]) for r in rows}


def _log_mlflow(cfg: AppConfig, target: Any, run_id: str, facts: dict, report_path: str, explained: int,
                seconds: float) -> str:
    return log_job_run(target, cfg.mlflow.experiment, "explain", run_id, params=facts,
                       metrics={"explained_rows": explained, "seconds": seconds,
                                "rows_per_s": explained / seconds if seconds else 0.0},
                       report_path=report_path, artifact_dir="explanations")
