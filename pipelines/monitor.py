"""Drift monitoring pipeline: a scoring table (batch predictions, the stream sink, or an input table to score)
against the training baseline -> metrics table + HTML report + MLflow run.

baseline = ``monitor.baseline`` (null: ``train.table`` rows of ``monitor.baseline_split``) and current =
``monitor.current``. A side that is a predictions table (it has ``prediction``/``probability``) is used as
written (only its latest scoring run when it holds several) and joined back on ``sha256`` to the input table
it records for the input statistics; a side that is an input table is scored first with the model. The model
is the one that scored the current table (its ``model_uri``), else ``inference.model`` / the champion.

Compared: max probability (PSI + KS), per-class probability (PSI), predicted-class shares (PSI), and input
statistics both sides can give under one definition: images brightness/contrast from ``pixels``; text length
(attended tokens, else characters) and unknown-token rate (ingested counts, else the tokenizer on ``text``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Sequence

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import functions as F

from dlspark.config import AppConfig, ConfigError
from dlspark.filesystem import write_text
from dlspark.inference.model import ModelBundle, load_model, requested_model
from dlspark.inference.spark_scoring import DEFAULT_PASSTHROUGH, expected_labels, label_accuracy, score_rows
from dlspark.monitoring import Metric, Sample, Thresholds, compare_samples, drifted, per_class_probabilities
from dlspark.monitoring.features import image_stats, unknown_rate_fn
from dlspark.monitoring.report import class_share_png, histogram_png, render_html, slices_html
from dlspark.monitoring.slice_frame import aggregate_slices, slice_columns
from dlspark.monitoring.slices import SliceRules, SliceVerdict, dropped_values, judge_slices, slice_metrics, verdict_rows
from dlspark.paths import resolve_path
from dlspark.tables import read_table, write_table
from dlspark.tracking import log_job_run, resolve_tracking

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("pixels", "text", "attention_mask", "num_tokens", "unknown_tokens")
METRICS_DDL = ("run_id string, baseline string, current string, model string, metric string, statistic string, "
               "feature string, value double, baseline_value double, current_value double, threshold double, "
               "judged boolean, drifted boolean, computed_at timestamp")
SLICES_DDL = ("run_id string, current string, model string, slice string, value string, rows long, labelled long, "
              "accuracy double, positive_rate double, mean_confidence double, ece double, accuracy_ratio double, "
              "positive_rate_ratio double, judged boolean, flagged boolean, reasons string, computed_at timestamp")


@dataclass(frozen=True)
class MonitorReport:
    """What one monitoring run found and where it wrote it."""

    run_id: str
    baseline: str
    current: str
    model: str
    metrics: tuple[Metric, ...]
    output: str
    report: str
    mlflow_run_id: str
    slices: tuple[SliceVerdict, ...] = ()
    slice_output: str = ""

    @property
    def drifted(self) -> list[Metric]:
        """Metrics past their threshold: distribution drift and flagged slices."""
        return drifted(self.metrics)

    @property
    def flagged_slices(self) -> list[SliceVerdict]:
        return [v for v in self.slices if v.flagged]

    def describe(self) -> str:
        flagged = ", ".join(f"{m.metric}={m.value:.4g}" for m in self.drifted if not m.feature.startswith("slice:")) or "none"
        slices = ", ".join(f"{v.slice}={v.value}" for v in self.flagged_slices) or "none"
        return (f"{self.current} vs baseline {self.baseline} ({self.model}): {len(self.metrics)} metrics, "
                f"drifted: {flagged}; {len(self.slices) - 1} slice values, flagged: {slices}; metrics {self.output}; "
                f"slices {self.slice_output}; report {self.report}")


def monitor(spark: SparkSession, cfg: AppConfig, run_id: str) -> MonitorReport:
    """Compare ``monitor.current`` with the baseline, write the metrics table and report, log to MLflow."""
    mcfg = cfg.monitor
    if not mcfg.current:
        raise ConfigError("monitor.current: set the table to check, e.g. --set monitor.current=tables/predictions/<model>")
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    current_uri = resolve_path(cfg.paths.data_dir, mcfg.current)
    baseline_uri = resolve_path(cfg.paths.data_dir, mcfg.baseline or cfg.train.table)
    current_df = latest_scoring(read_table(spark, current_uri, fmt=mcfg.format).df)
    baseline_df = read_table(spark, baseline_uri, fmt=mcfg.format if mcfg.baseline else cfg.inference.input_format).df
    if mcfg.baseline_split and "split" in baseline_df.columns:
        baseline_df = baseline_df.where(F.col("split") == mcfg.baseline_split)
    bundle = load_model(target, _model_uri(current_df, cfg))
    sides = [with_inputs(spark, latest_scoring(baseline_df), cfg), with_inputs(spark, current_df, cfg)]
    features = feature_definitions([s.columns for s in sides], bundle.kind)
    t = Thresholds(psi=mcfg.psi_threshold, ks_pvalue=mcfg.ks_pvalue, min_rows=mcfg.min_rows, bins=mcfg.bins)
    baseline_side = prepare_side(spark, sides[0], cfg, bundle, features)
    current_side = prepare_side(spark, sides[1], cfg, bundle, features).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        samples = [collect_sample(df, cfg, bundle, features) for df in (baseline_side, current_side)]
        verdicts = slice_verdicts(current_side, cfg, bundle)
    finally:
        current_side.unpersist()
    rules = slice_rules(cfg)
    metrics = compare_samples(samples[0], samples[1], bundle.labels, t) + slice_metrics(verdicts, rules)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    output, slice_output = (resolve_path(cfg.paths.data_dir, p) for p in (mcfg.output, mcfg.slice_output))
    names = (baseline_uri + (f"[split={mcfg.baseline_split}]" if mcfg.baseline_split else ""), current_uri)
    write_table(spark.createDataFrame([(run_id, *names, bundle.ref.label, *_row(m), now) for m in metrics], METRICS_DDL),
                output, fmt=mcfg.format, mode="append", delta_writer=cfg.spark.delta_writer)
    slice_rows = [(run_id, names[1], bundle.ref.label, *r.values(), now) for r in verdict_rows(verdicts)]
    write_table(spark.createDataFrame(slice_rows, SLICES_DDL), slice_output, fmt=mcfg.format, mode="append",
                delta_writer=cfg.spark.delta_writer)
    report_path = f"{resolve_path(cfg.paths.data_dir, mcfg.report_dir).rstrip('/')}/{run_id}/report.html"
    facts = {"run id": run_id, "baseline": names[0], "current": names[1], "model": bundle.ref.label,
             "computed at": f"{now:%Y-%m-%d %H:%M:%S} UTC", "PSI bins": mcfg.bins, "psi_threshold": t.psi,
             "ks_pvalue": t.ks_pvalue, "min_rows": t.min_rows, "slice rules": rules}
    page = render_html(f"Drift report {run_id}", facts, [m for m in metrics if not m.feature.startswith("slice:")],
                       _plots(samples, bundle.labels), sections={"Slices of the current table": slices_html(verdicts)})
    write_text(report_path, page)
    mlflow_run = _log_mlflow(cfg, target, run_id, facts, metrics, report_path)
    report = MonitorReport(run_id, names[0], names[1], bundle.ref.label, tuple(metrics), output, report_path, mlflow_run,
                           tuple(verdicts), slice_output)
    log.info("%s", report.describe())
    return report


def latest_scoring(df: DataFrame) -> DataFrame:
    """A predictions table's rows of its most recent scoring run (by ``scored_at``); other tables unchanged."""
    if "scoring_key" not in df.columns or "scored_at" not in df.columns:
        return df
    keys = df.groupBy("scoring_key").agg(F.max("scored_at").alias("at")).orderBy(F.desc("at")).collect()
    if len(keys) > 1:
        log.info("the table holds %d scoring runs; monitoring the latest, scoring_key %s", len(keys), keys[0]["scoring_key"])
    return df.where(F.col("scoring_key") == keys[0]["scoring_key"]) if keys else df


def with_inputs(spark: SparkSession, df: DataFrame, cfg: AppConfig) -> DataFrame:
    """A predictions table joined (left, on ``sha256``) to the input columns of the table it records in ``input_table``."""
    if not _is_predictions(df) or "sha256" not in df.columns or "input_table" not in df.columns \
            or any(c in df.columns for c in INPUT_COLUMNS):
        return df
    first = df.select("input_table").limit(1).collect()
    if not first:
        return df
    inputs = read_table(spark, first[0][0], fmt=cfg.inference.input_format).df
    wanted = [c for c in INPUT_COLUMNS if c in inputs.columns]
    return df.join(inputs.select("sha256", *wanted).dropDuplicates(["sha256"]), on="sha256", how="left")


def feature_definitions(columns: Sequence[Sequence[str]], kind: str) -> dict[str, str]:
    """Input statistics every side can compute the same way: feature name -> the definition used.

    Images: ``brightness``/``contrast`` from ``pixels``. Text: ``text_length`` in attended tokens
    (``attention_mask``) else characters (``text``); ``unknown_rate`` from the ingested
    ``unknown_tokens``/``num_tokens`` else by tokenizing ``text``.
    """
    every = lambda *cols: all(all(c in side for c in cols) for side in columns)  # noqa: E731
    if kind == "image":
        return {"brightness": "pixels", "contrast": "pixels"} if every("pixels") else {}
    out = {}
    if every("attention_mask") or every("text"):
        out["text_length"] = "attention_mask" if every("attention_mask") else "text"
    if every("unknown_tokens", "num_tokens") or every("text"):
        out["unknown_rate"] = "ingested" if every("unknown_tokens", "num_tokens") else "text"
    return out


def add_features(df: DataFrame, features: dict[str, str], cfg: AppConfig) -> DataFrame:
    """``df`` with one double column per feature (see ``feature_definitions``)."""
    if "brightness" in features:
        stats = F.pandas_udf(image_stats, "brightness double, contrast double")(F.col("pixels"))
        df = df.withColumn("_img", stats).select("*", "_img.brightness", "_img.contrast").drop("_img")
    if features.get("text_length") == "attention_mask":
        df = df.withColumn("text_length", F.aggregate("attention_mask", F.lit(0), lambda acc, x: acc + x).cast("double"))
    elif features.get("text_length") == "text":
        df = df.withColumn("text_length", F.length("text").cast("double"))
    if features.get("unknown_rate") == "ingested":
        df = df.withColumn("unknown_rate", F.try_divide("unknown_tokens", "num_tokens").cast("double"))
    elif features.get("unknown_rate") == "text":
        rate = unknown_rate_fn(cfg.ingest_text.tokenizer, cfg.ingest_text.max_length)
        df = df.withColumn("unknown_rate", F.pandas_udf(rate, "double")(F.col("text")))
    return df


def prepare_side(spark: SparkSession, df: DataFrame, cfg: AppConfig, bundle: ModelBundle,
                 features: dict[str, str]) -> DataFrame:
    """``df`` with the feature columns, scored first if it is an input table (its inputs kept for the slices)."""
    df = add_features(df, features, cfg)
    if not _is_predictions(df):
        keep = tuple(c for c in (*DEFAULT_PASSTHROUGH, *features, *SLICE_INPUTS, *(cfg.monitor.slices or ()))
                     if c in df.columns)
        df = score_rows(spark, df, replace(cfg, inference=replace(cfg.inference, passthrough=tuple(dict.fromkeys(keep)))),
                        bundle)
    return df


SLICE_INPUTS = ("text", "attention_mask", "source_path")   # what the derived slices read, kept through scoring


def slice_rules(cfg: AppConfig) -> SliceRules:
    m = cfg.monitor
    return SliceRules(min_rows=m.slice_min_rows, min_labelled=m.slice_min_labelled,
                      min_accuracy_ratio=m.slice_min_accuracy_ratio, min_rate_ratio=m.slice_min_rate_ratio,
                      max_ece_increase=m.slice_max_ece_increase)


def positive_class(cfg: AppConfig, bundle: ModelBundle) -> str | None:
    """``monitor.positive_class``, else ``positive`` when the model has that class, else None (no positive rate)."""
    wanted = cfg.monitor.positive_class
    if wanted is None:
        return "positive" if "positive" in bundle.labels else None
    if wanted not in bundle.labels:
        raise ConfigError(f"monitor.positive_class: {wanted!r} is not a class of {bundle.ref.label} ({list(bundle.labels)})")
    return wanted


def slice_verdicts(df: DataFrame, cfg: AppConfig, bundle: ModelBundle) -> list[SliceVerdict]:
    """Per slice value of the scored ``df``: counts, accuracy, positive rate, confidence, ECE and the verdict."""
    try:
        slices = slice_columns(df.columns, cfg.monitor.slices)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    positive = positive_class(cfg, bundle)
    cells = aggregate_slices(df, slices, expected_labels(bundle) if "label" in df.columns else {}, positive)
    for name, left_out in dropped_values(cells).items():
        log.warning("slice %s has %d values more than the report keeps; the least frequent are left out", name, left_out)
    return judge_slices(cells, slice_rules(cfg), has_positive=positive is not None)


def collect_sample(df: DataFrame, cfg: AppConfig, bundle: ModelBundle, features: dict[str, str]) -> Sample:
    """Gather counts, accuracy and (sampled) feature values of a prepared side (:func:`prepare_side`)."""
    cols = ["prediction", "probability", "probabilities", "error", *features, *(["label"] if "label" in df.columns else [])]
    df = df.select(*cols).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rows = df.count()
        predicted = df.where(F.col("prediction").isNotNull()).groupBy("prediction").count().collect()
        counts = {r["prediction"]: int(r["count"]) for r in predicted}
        accuracy, labelled = label_accuracy(df, bundle)
        scored = df.where(F.col("error").isNull() & F.col("prediction").isNotNull())
        if rows > cfg.monitor.sample_rows:
            scored = scored.sample(fraction=cfg.monitor.sample_rows / rows, seed=0)
        pdf = scored.select("probability", "probabilities", *features).toPandas()
    finally:
        df.unpersist()
    values = {"probability": pdf["probability"].to_numpy(np.float64)}
    if len(pdf):
        values.update(per_class_probabilities(np.stack(pdf["probabilities"].to_numpy()), bundle.labels))
    values.update({name: pdf[name].to_numpy(np.float64) for name in features})
    return Sample(rows=rows, features=values, class_counts=counts, accuracy=accuracy, labelled=labelled)


def _is_predictions(df: DataFrame) -> bool:
    return "prediction" in df.columns and "probability" in df.columns and "probabilities" in df.columns


def _model_uri(current: DataFrame, cfg: AppConfig) -> str:
    """The model that scored the current table (its ``model_uri``), else ``inference.model`` / the champion."""
    if "model_uri" in current.columns:
        uris = [r[0] for r in current.select("model_uri").distinct().limit(2).collect()]
        if len(uris) > 1:
            raise ValueError(f"monitor.current holds rows of several models {uris}; monitor a table scored by one model")
        if uris:
            return uris[0]
    return requested_model(cfg)


def _row(m: Metric) -> tuple:
    return (m.metric, m.statistic, m.feature, m.value, m.baseline_value, m.current_value, m.threshold, m.judged, m.drifted)


def _plots(samples: list[Sample], classes: Sequence[str]) -> dict[str, bytes]:
    baseline, current = samples
    plots = {"predicted class shares": class_share_png(baseline.class_counts, current.class_counts, classes)}
    for name, values in baseline.features.items():
        other = current.features.get(name)
        if other is not None and np.isfinite(values).any() and np.isfinite(other).any():
            plots[name] = histogram_png(name, values, other)
    return plots


def _log_mlflow(cfg: AppConfig, target, run_id: str, facts: dict, metrics: Sequence[Metric], report_path: str) -> str:
    """One MLflow run: the facts as params, every metric value, the count of drifted metrics, the report."""
    values = {m.metric: m.value for m in metrics if m.value is not None}
    return log_job_run(target, cfg.mlflow.experiment, "monitor", run_id, params=facts,
                       metrics={**values, "drifted_metrics": len(drifted(metrics))}, report_path=report_path,
                       artifact_dir="monitoring")

