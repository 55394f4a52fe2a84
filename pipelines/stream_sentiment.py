"""Streaming sentiment: JSON lines (files or Kafka) -> scored predictions, quarantine, windowed aggregates.

Three streaming queries, each exactly-once through Spark's file sink (a batch's files become visible only
when the batch is recorded in ``<sink>/_spark_metadata``; the checkpoint records which input each batch
read, so a restart after a crash replays the unfinished batch and the sink log ignores its stray files):

* ``predictions``: parse -> valid rows -> ``mapInArrow`` scoring with the registered model (raw text is
  normalised and tokenized as ingest did) -> Parquet at ``stream.output``;
* ``quarantine``:  parse -> rows that cannot be scored (raw line, reason, arrival time) -> ``stream.quarantine``;
* ``aggregates``:  the predictions sink read as a file stream (only committed batches) -> event-time windows
  with a watermark -> per-window count and mean positive probability, appended when a window closes.

Both the predictions and the quarantine query read every input line and keep the rows the other drops
(see ``dlspark.inference.streaming``), so every line ends in exactly one of the two sinks. Readers use
``spark.read.parquet(<sink>)``, which honours the sink log.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pyspark.sql import functions as F

from dlspark.config import AppConfig, ConfigError
from dlspark.filesystem import exists, makedirs
from dlspark.inference.inputs import ingest_text_fallback
from dlspark.inference.model import ModelBundle, expected_labels, load_model, requested_model
from dlspark.inference.spark_scoring import label_accuracy, score_dataframe, scoring_spec, ship_model
from dlspark.inference.streaming import (
    MessageFields,
    parse_messages,
    quarantined_lines,
    read_file_source,
    read_kafka_source,
    require_kafka,
    valid_messages,
    window_aggregates,
)
from dlspark.paths import resolve_path
from dlspark.spark.connect import executors_share_files, is_connect
from dlspark.spark.stream_progress import ProgressTracker, wait_until_idle
from dlspark.tracking import resolve_tracking

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

PASSTHROUGH = ("id", "label", "event_time", "arrival_time", "source", "text")


@dataclass(frozen=True)
class RunMode:
    """How long to run: until no query has had input for ``until_idle_s``, once over what is there, or forever."""

    until_idle_s: float | None = None
    available_now: bool = False
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        if self.available_now and self.until_idle_s is not None:
            raise ConfigError("choose one of --until-idle SECONDS and --available-now, not both")
        if self.until_idle_s is not None and self.until_idle_s <= 0:
            raise ConfigError(f"--until-idle must be > 0 seconds, got {self.until_idle_s}")


@dataclass(frozen=True)
class StreamPaths:
    """Resolved sink, source and checkpoint locations."""

    input: str
    output: str
    quarantine: str
    aggregates: str
    checkpoint: str

    def checkpoint_of(self, query: str) -> str:
        return f"{self.checkpoint.rstrip('/')}/{query}"


@dataclass(frozen=True)
class StreamReport:
    """What one run did (``batches``/``input_rows`` per query, this run) and what the sinks hold (all runs)."""

    model: str
    batches: dict[str, int]
    input_rows: dict[str, int]
    predicted: int                          # rows in the predictions sink (a prediction or a per-row model error)
    quarantined: int                        # rows in the quarantine sink
    windows: int                            # closed windows in the aggregates sink
    lines: int | None                       # input lines in stream.input (files source); None for Kafka
    accuracy: float | None = None           # over predicted messages whose label maps to a model class
    labelled: int = 0
    last_progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)   # per query, per batch
    runtime: str = "source"                 # what scored: source, or e.g. "onnx-int8 = dlspark-sentiment-onnx-int8/1"

    @property
    def reconciled(self) -> bool | None:
        """predicted + quarantined == lines (None when the input cannot be counted)."""
        return None if self.lines is None else self.predicted + self.quarantined == self.lines

    def describe(self) -> str:
        lines = "?" if self.lines is None else self.lines
        check = {True: "reconciled", False: "NOT reconciled", None: "input not countable"}[self.reconciled]
        return (f"{self.model}: this run {self.batches} batches, {self.input_rows} input rows; sinks hold "
                f"{self.predicted} predicted + {self.quarantined} quarantined of {lines} lines ({check}), "
                f"{self.windows} closed windows"
                + ("" if self.accuracy is None else f"; accuracy {self.accuracy:.4f} on {self.labelled} labelled messages"))


def stream_sentiment(spark: SparkSession, cfg: AppConfig, run_id: str, mode: RunMode = RunMode()) -> StreamReport:
    """Start the three queries and run them as ``mode`` says; returns the run's :class:`StreamReport`."""
    check_stream_config(cfg)
    check_stream_session(spark)
    if cfg.stream.source == "kafka":
        require_kafka(spark)                    # before the model download: fail fast
    bundle = load_model(resolve_tracking(cfg.mlflow, cfg.paths.data_dir), requested_model(cfg),
                        runtime=cfg.inference.runtime)
    if bundle.kind != "text":
        raise ConfigError(f"stream scores text but {bundle.ref.label} is an {bundle.kind} model: "
                          "set inference.model (or mlflow.registered_model) to a sentiment model")
    paths = stream_paths(cfg)
    parsed = read_messages(spark, cfg, paths).transform(partial(parse_messages, fields=message_fields(cfg)))
    scored = score_messages(spark, valid_messages(parsed), cfg, bundle)
    trigger = _trigger(cfg.stream.trigger_seconds, mode.available_now)
    side = _trigger(cfg.stream.side_trigger_seconds, mode.available_now)   # quarantine and aggregates
    sinks = [start_file_sink(scored, "predictions", paths.output, paths, trigger),
             start_file_sink(quarantined_lines(parsed), "quarantine", paths.quarantine, paths, side)]
    log.info("run %s: streaming %s -> %s (quarantine %s) with %s on %s (%s)", run_id, paths.input, paths.output,
             paths.quarantine, bundle.source_ref.label, bundle.runtime_label, bundle.runtime_reason)
    aggregates = partial(start_aggregates, spark, cfg, paths, scored.schema, positive_index(cfg, bundle), side)
    tracker = run_queries(sinks, aggregates, mode)
    return build_report(spark, cfg, paths, bundle, tracker)


def check_stream_session(spark: SparkSession) -> None:
    """Over a remote Spark Connect server the model cannot reach the stream's tasks: on Spark 4.3 they do not see
    the session's ``addArtifacts`` files (batch tasks do). Say so at start, with what works instead."""
    if is_connect(spark) and not executors_share_files(spark):
        raise ConfigError("stream_sentiment over a remote Spark Connect server cannot ship the model: Spark's streaming "
                          "tasks do not see files added with addArtifacts. Run the stream with spark-submit (a classic "
                          "session), or over Connect with a server in this process (spark.remote: local[*])")


def check_stream_config(cfg: AppConfig) -> None:
    """Reject what the streaming job cannot do, saying what to set instead."""
    if cfg.stream.format != "parquet":
        raise ConfigError(f"stream.format is {cfg.stream.format!r}; streaming writes parquet only (exactly-once through "
                          "the file sink's _spark_metadata log; no delta-spark jars here): set stream.format: parquet")


def stream_paths(cfg: AppConfig) -> StreamPaths:
    s, root = cfg.stream, cfg.paths.data_dir
    return StreamPaths(*(resolve_path(root, p) for p in (s.input, s.output, s.quarantine, s.aggregates, s.checkpoint)))


def message_fields(cfg: AppConfig) -> MessageFields:
    return MessageFields(id=cfg.stream.id_field, text=cfg.stream.text_field, time=cfg.stream.time_field)


def read_messages(spark: SparkSession, cfg: AppConfig, paths: StreamPaths) -> DataFrame:
    """The configured source as ``raw``, ``arrival_time``, ``source`` (files: the folder is created if missing)."""
    s = cfg.stream
    if s.source == "kafka":
        return read_kafka_source(spark, str(s.kafka_bootstrap_servers), str(s.kafka_topic))
    makedirs(paths.input)
    return read_file_source(spark, paths.input, s.max_files_per_trigger)


def score_messages(spark: SparkSession, valid: DataFrame, cfg: AppConfig, bundle: ModelBundle) -> DataFrame:
    """Valid messages scored from their raw text, with the model's name, version and URI and ``scored_at``."""
    icfg = cfg.inference
    spec = scoring_spec(bundle, passthrough=PASSTHROUGH, batch_size=icfg.batch_size, top_k=icfg.top_k,
                        max_batch_tokens=icfg.max_batch_tokens,
                        device=icfg.device, amp=icfg.amp, text_mode="text", text_column="text",
                        text_fallback=ingest_text_fallback(cfg.ingest_text))
    if cfg.stream.score_partitions:
        valid = valid.repartition(cfg.stream.score_partitions)
    scored = score_dataframe(valid, ship_model(spark, spec))
    return scored.select("*", F.lit(bundle.ref.name or "").alias("model_name"),
                         F.lit(bundle.ref.version or "").alias("model_version"), F.lit(bundle.ref.uri).alias("model_uri"),
                         F.current_timestamp().alias("scored_at"))


def positive_index(cfg: AppConfig, bundle: ModelBundle) -> int:
    """Output index of ``train.sentiment.positive_label`` (through the training label map when there is one)."""
    wanted = cfg.train.sentiment.positive_label
    name = expected_labels(bundle).get(wanted, wanted)
    if name not in bundle.labels:
        raise ConfigError(f"train.sentiment.positive_label is {wanted!r} but {bundle.ref.label} predicts "
                          f"{list(bundle.labels)}: set it to one of those")
    return bundle.labels.index(name)


def start_file_sink(df: DataFrame, name: str, path: str, paths: StreamPaths, trigger: dict) -> StreamingQuery:
    """An append-mode Parquet file sink with its own checkpoint (exactly-once through ``_spark_metadata``)."""
    return (df.writeStream.queryName(name).format("parquet").outputMode("append")
            .option("checkpointLocation", paths.checkpoint_of(name)).trigger(**trigger).start(path))


def start_aggregates(spark: SparkSession, cfg: AppConfig, paths: StreamPaths, schema: Any, positive: int,
                     trigger: dict) -> StreamingQuery:
    """Windowed aggregates over the committed predictions (read back as a file stream)."""
    makedirs(paths.output)
    predictions = spark.readStream.schema(schema).parquet(paths.output)
    windows = window_aggregates(predictions, window=cfg.stream.window, watermark=cfg.stream.watermark,
                                positive_index=positive)
    return start_file_sink(windows, "aggregates", paths.aggregates, paths, trigger)


def run_queries(sinks: Sequence[StreamingQuery], aggregates: Callable[[], StreamingQuery], mode: RunMode) -> ProgressTracker:
    """Run as ``mode`` says; every query is stopped on return, and a failed query's error is raised."""
    queries = list(sinks)
    try:
        if mode.available_now:
            for q in queries:
                q.awaitTermination()
            queries.append(aggregates())
            queries[-1].awaitTermination()
            return ProgressTracker(queries).poll_all()
        queries.append(aggregates())
        tracker = ProgressTracker(queries)
        if mode.until_idle_s is None:
            queries[0].sparkSession.streams.awaitAnyTermination()
        else:
            wait_until_idle(tracker, mode.until_idle_s, mode.poll_s)
        return tracker.poll_all()
    finally:
        for q in queries:
            q.stop()


def build_report(spark: SparkSession, cfg: AppConfig, paths: StreamPaths, bundle: ModelBundle,
                 tracker: ProgressTracker) -> StreamReport:
    lines = _count(spark, paths.input, "text") if cfg.stream.source == "files" else None
    predicted = _count(spark, paths.output)
    accuracy, labelled = label_accuracy(spark.read.parquet(paths.output), bundle) if predicted else (None, 0)
    report = StreamReport(model=bundle.ref.label, runtime=bundle.runtime_label, batches=tracker.batches(), input_rows=tracker.input_rows(),
                          predicted=predicted, accuracy=accuracy, labelled=labelled, quarantined=_count(spark, paths.quarantine),
                          windows=_count(spark, paths.aggregates), lines=lines, last_progress=tracker.last(),
                          history=tracker.history())
    if report.reconciled is False:
        log.warning("sinks hold %d + %d rows but the input has %d lines: a query stopped before reading everything; "
                    "run again (each line is written once)", report.predicted, report.quarantined, lines)
    log.info("%s", report.describe())
    return report


def _trigger(seconds: float, available_now: bool) -> dict:
    return {"availableNow": True} if available_now else {"processingTime": f"{seconds} seconds"}


def _count(spark: SparkSession, path: str, fmt: str = "parquet") -> int:
    if not exists(path):
        return 0
    reader = spark.read.text if fmt == "text" else spark.read.parquet
    try:
        return reader(path).count()
    except Exception as exc:  # noqa: BLE001 - an empty sink has no schema to infer
        if "Unable to infer schema" in str(exc):
            return 0
        raise
