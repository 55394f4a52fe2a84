"""Batch inference pipeline: an ingested table + a registered model -> a predictions table.

resolve the model (alias pinned to a version) -> download it once, ship it to executors -> snapshot the
input table (Delta version or file fingerprint) -> skip if this (input, model) pair was already scored ->
``mapInArrow`` scoring -> append to the output table partitioned by ``scored_date`` -> reconcile counts
(every input row is in the output exactly once, with a prediction or an error) -> accuracy where labels
exist, computed from the written rows (-> with ``inference.explain``, attributions for ``explain.rows`` of them).

Idempotent per (input version, model version): the pair's ``scoring_key`` is recorded in
``<output>/_dlspark/scoring/<key>.json`` after a successful write; a rerun finds it and writes nothing.
Parquet files left by a run that died before recording its key are deleted before scoring again.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

from pyspark.sql import functions as F

from dlspark.config import AppConfig, ConfigError
from dlspark.explain.explain_table import ExplainReport, explain_table
from dlspark.inference.model import ModelBundle, expected_labels, load_model, requested_model, resolve_model
from dlspark.inference.runtime import SOURCE_TAG as SOURCE_MODEL_TAG
from dlspark.inference.spark_scoring import label_accuracy, score_rows
from dlspark.ingest.outcome import CountMismatch
from dlspark.paths import resolve_path
from dlspark.runlog import read_json, write_json
from dlspark.tables import delete_where, read_table, table_exists, write_table
from dlspark.tracking import TrackingTarget, resolve_tracking

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ScoringReport:
    """What one batch-inference run did; ``skipped`` when the (input, model) pair was already scored."""

    model: str                      # name/version (or URI when unregistered) of what ran: the export, with a runtime
    flavor: str
    input_table: str
    input_version: str
    output: str
    scoring_key: str
    skipped: bool
    rows: int
    scored: int
    errors: int
    accuracy: float | None          # over labelled rows the model has a class for; None without labels
    labelled: int
    train_test_accuracy: float | None
    error_reasons: dict[str, int] = field(default_factory=dict)
    runtime: str = "source"         # source | onnx | onnx-int8 | torchscript (inference.runtime's choice)
    runtime_reason: str = ""
    explanations: str | None = None  # what inference.explain did (ExplainReport.describe), None when off

    def describe(self) -> str:
        acc = "no labels" if self.accuracy is None else f"accuracy {self.accuracy:.4f} on {self.labelled} labelled rows"
        train = "" if self.train_test_accuracy is None else f" (training test_accuracy {self.train_test_accuracy:.4f})"
        verb = "already scored, nothing written" if self.skipped else "scored"
        runtime = "" if self.runtime == "source" else f", runtime {self.runtime} ({self.runtime_reason})"
        explained = f"; explanations: {self.explanations}" if self.explanations else ""
        return (f"{self.model} [{self.flavor}{runtime}] on {self.input_table}@{self.input_version}: {verb}; rows {self.rows} = "
                f"{self.scored} predicted + {self.errors} errors; {acc}{train}; output {self.output}{explained}")


def score_table(spark: SparkSession, cfg: AppConfig, run_id: str, bundle: ModelBundle | None = None) -> ScoringReport:
    """Score ``cfg.inference.input`` with ``cfg.inference.model`` (default: the registered model's champion), or with
    ``bundle`` when given (already loaded on its runtime)."""
    icfg = cfg.inference
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    bundle = bundle or load_model(target, requested_model(cfg), runtime=cfg.inference.runtime)
    input_uri = resolve_path(cfg.paths.data_dir, icfg.input or cfg.train.table)
    snapshot = read_table(spark, input_uri, fmt=icfg.input_format, version=icfg.input_version)
    input_version = f"v{snapshot.version}" if snapshot.version is not None else f"files-{snapshot.fingerprint[:16]}"
    output = resolve_path(cfg.paths.data_dir, cfg.predictions_output(bundle.source_ref.name))
    key = scoring_key(bundle, input_uri, input_version, icfg.split, icfg.text_mode)
    marker = f"{output.rstrip('/')}/_dlspark/scoring/{key}.json"
    done = read_json(marker)
    if done is not None:
        log.info("input %s@%s was already scored by %s on %s: nothing to do", input_uri, input_version,
                 bundle.ref.label, done.get("scored_date"))
        return _report(done, skipped=True)
    _remove_partial_run(spark, output, icfg.format, key, cfg.spark.delta_writer)
    rows = snapshot.df if icfg.split is None else snapshot.df.where(F.col("split") == icfg.split)
    if icfg.only_new:
        rows = unscored_rows(spark, rows, output, icfg.format, bundle)
    scored = score_rows(spark, rows, cfg, bundle)
    now = datetime.now(timezone.utc)
    out = scored.select("*", *_run_columns(bundle, input_uri, input_version, key, now))
    write_table(out, output, fmt=icfg.format, mode="append", partition_by=["scored_date"], delta_writer=cfg.spark.delta_writer)
    summary = summarize(spark, output, icfg.format, key, expected_rows=rows.count(), bundle=bundle)
    summary.update(model=bundle.ref.label, model_uri=bundle.ref.uri, requested=bundle.ref.requested, flavor=bundle.flavor,
                   source_model=bundle.source_ref.uri, runtime=bundle.runtime, runtime_reason=bundle.runtime_reason,
                   input_table=input_uri, input_version=input_version, output=output, scoring_key=key, run_id=run_id,
                   scored_date=now.date().isoformat(), train_test_accuracy=_train_test_accuracy(target, bundle))
    write_json(marker, summary)
    report = _report(summary, skipped=False)
    if icfg.explain:
        report = replace(report, explanations=explain_scored(spark, cfg, bundle, run_id).describe())
    log.info("%s", report.describe())
    return report


def explain_scored(spark: SparkSession, cfg: AppConfig, bundle: ModelBundle, run_id: str) -> ExplainReport:
    """``inference.explain``: explain ``explain.rows`` of the rows just scored (same input and split) with the scored
    version's pytorch source, under the ``explain`` settings."""
    icfg = cfg.inference
    settings = replace(cfg.explain, model=bundle.source_ref.uri, input=icfg.input or cfg.train.table, split=icfg.split)
    return explain_table(spark, replace(cfg, explain=settings), run_id)


@dataclass(frozen=True)
class ComparisonReport:
    """Champion and challenger scored on the same rows, and what the roll-out split would have answered."""

    champion: ScoringReport
    challenger: ScoringReport
    share: float                    # challenger's share of the split (serve.rollout: ab split, first canary step)
    key: str                        # row id column the split hashes (as serving hashes x-rollout-key)
    rows: int                       # rows both versions scored
    agreement: float | None         # same class from both
    challenger_rows: int            # rows the split sends to the challenger
    split_accuracy: float | None    # accuracy of the answers the split would have given
    labelled: int
    path: str                       # the JSON report

    def describe(self) -> str:
        def acc(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"
        return (f"{self.challenger.model} vs champion {self.champion.model} on {self.rows} rows: agreement "
                f"{acc(self.agreement)}; accuracy champion {acc(self.champion.accuracy)}, challenger "
                f"{acc(self.challenger.accuracy)}, split ({self.share:.0%} challenger by {self.key}: "
                f"{self.challenger_rows} rows) {acc(self.split_accuracy)} on {self.labelled} labelled; report {self.path}")


def compare_challenger(spark: SparkSession, cfg: AppConfig, run_id: str) -> ComparisonReport:
    """Score the input with the champion and with the roll-out's challenger (``serve.rollout``), both into the
    predictions table (each idempotent as :func:`score_table`), and write the offline comparison: agreement, both
    accuracies, and the accuracy of the answers the split would have given, assigning each row by the sticky
    point of its id exactly as serving assigns a request by its ``x-rollout-key``."""

    from dlspark.traffic_split import start_share

    other = cfg.challenger_model_uri
    if other is None:
        raise ConfigError("comparing with a challenger needs serve.rollout.mode ab, canary or shadow: the challenger "
                          "(serve.rollout.challenger / challenger_alias) and the split come from there")
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    runtime = cfg.inference.runtime
    champion_bundle = load_model(target, requested_model(cfg), runtime=runtime)
    challenger_bundle = load_model(target, other, runtime=runtime)
    if champion_bundle.source_ref.uri == challenger_bundle.source_ref.uri:
        raise ConfigError(f"the challenger {other} is the champion's own version {champion_bundle.source_ref.label}: "
                          "point serve.rollout.challenger_alias (or challenger) at another version")
    champion = score_table(spark, cfg, run_id, champion_bundle)
    challenger_cfg = replace(cfg, inference=replace(cfg.inference, model=other))
    challenger = score_table(spark, challenger_cfg, run_id, challenger_bundle)
    share = start_share(cfg.serve.rollout)
    pair = _paired_predictions(spark, champion, challenger, cfg.inference.format)
    key = next(c for c in ("sha256", "record_id") if c in pair.columns)
    arm = F.when(_sticky_point(F.col(key)) < F.lit(share), "challenger").otherwise("champion")
    pair = pair.withColumn("arm", arm)
    answered = pair.select("label", F.when(F.col("arm") == "challenger", F.col("challenger_prediction"))
                           .otherwise(F.col("champion_prediction")).alias("prediction")) if "label" in pair.columns else None
    counts = pair.agg(F.count(F.lit(1)).alias("rows"),
                      F.sum(F.when(F.col("champion_prediction").eqNullSafe(F.col("challenger_prediction")), 1).otherwise(0)).alias("same"),
                      F.sum(F.when(F.col("arm") == "challenger", 1).otherwise(0)).alias("to_challenger")).first()
    rows = int(counts["rows"])
    split_accuracy, labelled = label_accuracy(answered, champion_bundle) if answered is not None else (None, 0)
    path = f"{champion.output.rstrip('/')}/_dlspark/comparisons/{champion.scoring_key}-{challenger.scoring_key}.json"
    summary = {"run_id": run_id, "champion": asdict(champion), "challenger": asdict(challenger), "share": share,
               "mode": cfg.serve.rollout.mode, "key": key, "rows": rows,
               "agreement": int(counts["same"] or 0) / rows if rows else None,
               "challenger_rows": int(counts["to_challenger"] or 0), "split_accuracy": split_accuracy, "labelled": labelled,
               "by_true_label": _accuracy_by_label(pair, champion_bundle) if "label" in pair.columns else {}}
    write_json(path, summary)
    report = ComparisonReport(champion, challenger, share, key, rows, summary["agreement"], summary["challenger_rows"],
                              split_accuracy, labelled, path)
    log.info("%s", report.describe())
    return report


def _paired_predictions(spark: SparkSession, champion: ScoringReport, challenger: ScoringReport, fmt: str) -> DataFrame:
    """One row per input row both scorings wrote: its id, label (when present) and both predictions."""
    def scoring(report: ScoringReport, prefix: str) -> DataFrame:
        df = read_table(spark, report.output, fmt=fmt).df.where(F.col("scoring_key") == report.scoring_key)
        key = next((c for c in ("sha256", "record_id") if c in df.columns), None)
        if key is None:
            raise ValueError(f"{report.output} has no row id column (sha256 or record_id) to pair the two versions' "
                             "predictions by; keep it in inference.passthrough")
        extra = ["label"] if "label" in df.columns and prefix == "champion" else []
        return df.select(key, *extra, F.col("prediction").alias(f"{prefix}_prediction"))

    left, right = scoring(champion, "champion"), scoring(challenger, "challenger")
    key = next(c for c in ("sha256", "record_id") if c in left.columns)
    return left.join(right, on=key, how="inner")


def _sticky_point(key: Column) -> Column:
    """``dlspark.traffic_split.key_point`` as a Spark expression: the first 8 bytes of SHA-256 as a fraction of 2^64."""
    head = F.conv(F.substring(F.sha2(key.cast("string"), 256), 1, 16), 16, 10).cast("decimal(20,0)")
    return head.cast("double") / F.lit(2.0 ** 64)


def _accuracy_by_label(pair: DataFrame, bundle: ModelBundle) -> dict[str, dict[str, float | int]]:
    """Per true label: rows, and each version's accuracy on them (labels the model has a class for)."""
    expected = expected_labels(bundle)
    mapping = F.create_map(*[F.lit(x) for kv in expected.items() for x in kv])
    rows = (pair.withColumn("expected", F.try_element_at(mapping, F.col("label"))).where(F.col("expected").isNotNull())
            .groupBy("label").agg(F.count(F.lit(1)).alias("n"),
                                  F.avg((F.col("champion_prediction") == F.col("expected")).cast("int")).alias("champion"),
                                  F.avg((F.col("challenger_prediction") == F.col("expected")).cast("int")).alias("challenger"))
            .collect())
    return {r["label"]: {"rows": int(r["n"]), "champion": float(r["champion"]), "challenger": float(r["challenger"])}
            for r in sorted(rows, key=lambda r: r["label"])}


def unscored_rows(spark: SparkSession, rows: DataFrame, output: str, fmt: str, bundle: ModelBundle) -> DataFrame:
    """``rows`` whose row id (``sha256`` or ``record_id``) the model version (or the export of it that runs) has not
    scored into ``output`` yet."""
    key = next((c for c in ("sha256", "record_id") if c in rows.columns), None)
    if key is None:
        raise ValueError(f"inference.only_new needs a row id column (sha256 or record_id); the input has {rows.columns}")
    if not table_exists(output, fmt=fmt):
        return rows
    done = read_table(spark, output, fmt=fmt).df
    if key not in done.columns:
        raise ValueError(f"inference.only_new: {output} has no {key} column to tell scored rows by; keep {key} in "
                         "inference.passthrough")
    uris = sorted({bundle.ref.uri, bundle.source_ref.uri})   # rows the version scored, on any runtime
    scored = done.where(F.col("model_uri").isin(uris)).select(key).distinct()
    return rows.join(scored, on=key, how="left_anti")


def scoring_key(bundle: ModelBundle, input_uri: str, input_version: str, split: str | None, text_mode: str) -> str:
    """Stable id of one (model version, input table version, split) pair."""
    raw = "|".join([bundle.ref.uri, input_uri.rstrip("/"), input_version, split or "all", text_mode])
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def summarize(spark: SparkSession, output: str, fmt: str, key: str, *, expected_rows: int, bundle: ModelBundle) -> dict[str, Any]:
    """Counts, error reasons and accuracy of the rows written under ``key``; raises if the counts do not reconcile."""
    written = read_table(spark, output, fmt=fmt).df.where(F.col("scoring_key") == key)
    counts = written.agg(F.count(F.lit(1)).alias("rows"), F.count("prediction").alias("scored")).first()
    rows, scored = int(counts["rows"]), int(counts["scored"])
    if rows != expected_rows:
        raise CountMismatch(f"{output}: {rows} rows written for scoring_key {key} but the input has {expected_rows}; "
                            "rerun the job (the partial output is removed first)")
    reasons = {r["reason"]: int(r["count"]) for r in written.where(F.col("error").isNotNull())
               .groupBy(F.substring_index("error", ":", 1).alias("reason")).count().collect()}
    accuracy, labelled = label_accuracy(written, bundle)
    return {"rows": rows, "scored": scored, "errors": rows - scored, "error_reasons": reasons,
            "accuracy": accuracy, "labelled": labelled}


def _run_columns(bundle: ModelBundle, input_uri: str, input_version: str, key: str, now: datetime) -> list:
    return [F.lit(bundle.ref.name or "").alias("model_name"), F.lit(bundle.ref.version or "").alias("model_version"),
            F.lit(bundle.ref.uri).alias("model_uri"), F.lit(input_uri).alias("input_table"),
            F.lit(input_version).alias("input_version"), F.lit(key).alias("scoring_key"),
            F.lit(now.replace(tzinfo=None)).cast("timestamp").alias("scored_at"),
            F.lit(now.date().isoformat()).cast("date").alias("scored_date")]


def _remove_partial_run(spark: SparkSession, output: str, fmt: str, key: str, delta_writer: str) -> None:
    """Delete rows of ``key`` left by a run that died after writing but before recording its marker."""
    if not table_exists(output, fmt=fmt):
        return
    if "scoring_key" not in read_table(spark, output, fmt=fmt).df.columns:
        raise ValueError(f"{output} exists but is not a predictions table (no scoring_key column); "
                         "set inference.output to a new path")
    removed = delete_where(spark, output, fmt=fmt, column="scoring_key", value=key, delta_writer=delta_writer)
    if removed:
        log.warning("removed the %d rows of an unfinished scoring run (scoring_key %s) from %s", removed, key, output)


def _train_test_accuracy(target: TrackingTarget, bundle: ModelBundle) -> float | None:
    """``test_accuracy`` of the run that trained the model (for an export: of the version it was exported from)."""
    client = target.client()
    run_id = bundle.ref.run_id
    if bundle.ref.name and bundle.ref.version:
        source = (client.get_model_version(bundle.ref.name, bundle.ref.version).tags or {}).get(SOURCE_MODEL_TAG)
        if source:
            run_id = resolve_model(target, source).run_id
    value = client.get_run(run_id).data.metrics.get("test_accuracy") if run_id else None
    return float(value) if value is not None else None


def _report(summary: Mapping[str, Any], *, skipped: bool) -> ScoringReport:
    return ScoringReport(model=summary["model"], flavor=summary["flavor"], input_table=summary["input_table"],
                         input_version=summary["input_version"], output=summary["output"],
                         scoring_key=summary["scoring_key"], skipped=skipped, rows=summary["rows"],
                         scored=summary["scored"], errors=summary["errors"], accuracy=summary["accuracy"],
                         labelled=summary["labelled"], train_test_accuracy=summary.get("train_test_accuracy"),
                         error_reasons=dict(summary.get("error_reasons") or {}),
                         runtime=summary.get("runtime", "source"), runtime_reason=summary.get("runtime_reason", ""))
