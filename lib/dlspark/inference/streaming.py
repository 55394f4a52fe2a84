"""Spark-facing streaming helpers: read JSON-line messages, split valid rows from quarantined lines, aggregate.

Every line the source yields ends in exactly one place: :func:`valid_messages` (scored) or
:func:`quarantined_lines` (with a reason), because both filter on the one ``reason`` column that
:func:`parse_messages` computes (null = valid). Reasons, in the order they are checked:

``blank_line``       the line is empty or whitespace
``malformed_json``   not a JSON object (unparseable, an array, a bare value)
``missing_id``       the id field is absent, null or empty
``missing_text``     the text field is absent or null
``empty_text``       the text field is empty or whitespace only
``bad_event_time``   the time field is present but not an ISO-8601 timestamp (absent = arrival time)

Text that is non-empty but normalises to nothing (rare) is scored and gets the model's per-row error
(``empty_text: nothing left after normalisation``) in the predictions sink, so it is still counted once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql import types as T

from dlspark.config import ConfigError
from dlspark.spark.connect import data_source_available, scala_binary_version

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

CORRUPT = "_corrupt_record"
KAFKA_PROVIDER = "org.apache.spark.sql.kafka010.KafkaSourceProvider"
KAFKA_PACKAGE = "org.apache.spark:spark-sql-kafka-0-10_{scala}:{version}"
QUARANTINE_COLUMNS = ("raw", "reason", "arrival_time", "source")
_BLANK = r"^\s*$"


@dataclass(frozen=True)
class MessageFields:
    """Names of the JSON fields a message carries (``stream.id_field`` ...); ``label`` is optional."""

    id: str = "id"
    text: str = "text"
    time: str = "created_at"
    label: str = "label"

    def schema(self) -> T.StructType:
        """Every field read as a string (numbers keep their JSON text), plus the corrupt-record column."""
        names = list(dict.fromkeys([self.id, self.text, self.time, self.label]))
        return T.StructType([T.StructField(n, T.StringType()) for n in names] + [T.StructField(CORRUPT, T.StringType())])


def read_file_source(spark: SparkSession, path: str, max_files_per_trigger: int) -> DataFrame:
    """Lines of the files dropped into ``path`` as ``raw``, with ``arrival_time`` (file mtime) and ``source`` (file)."""
    lines = spark.readStream.option("maxFilesPerTrigger", max_files_per_trigger).text(path)
    return lines.select(F.col("value").alias("raw"), F.col("_metadata.file_modification_time").alias("arrival_time"),
                        F.col("_metadata.file_path").alias("source"))


def read_kafka_source(spark: SparkSession, servers: str, topic: str) -> DataFrame:
    """Kafka values as ``raw`` strings, with the broker timestamp as ``arrival_time`` and topic/partition/offset as ``source``."""
    require_kafka(spark)
    records = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", servers)
               .option("subscribe", topic).option("startingOffsets", "earliest").load())
    source = F.format_string("%s/%d/%d", F.col("topic"), F.col("partition"), F.col("offset"))
    return records.select(F.col("value").cast("string").alias("raw"), F.col("timestamp").alias("arrival_time"),
                          source.alias("source"))


def require_kafka(spark: SparkSession) -> None:
    """Raise :class:`ConfigError` naming the package to add when the Kafka connector is not on the classpath."""
    if not data_source_available(spark, "kafka"):
        package = kafka_package(spark.version, scala_binary_version(spark))
        raise ConfigError(f"stream.source is kafka but the Kafka connector ({KAFKA_PROVIDER}) is not on the classpath: "
                          f"add --packages {package} to spark-submit (or spark.conf spark.jars.packages), "
                          "or set stream.source: files")


def kafka_package(spark_version: str, scala: str) -> str:
    """Maven coordinates of the Kafka connector built for this Spark and Scala version (pure)."""
    return KAFKA_PACKAGE.format(scala=scala, version=spark_version)


def parse_messages(raw: DataFrame, fields: MessageFields) -> DataFrame:
    """``raw`` + parsed ``id``, ``text``, ``label``, ``event_time`` and ``reason`` (null when the row can be scored)."""
    msg = F.from_json("raw", fields.schema(), {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}).alias("m")
    parsed = raw.select("*", msg)
    time_text = F.col(f"m.{fields.time}")
    event_time = F.try_to_timestamp(time_text)  # null, not CAST_INVALID_INPUT, under ANSI mode
    return parsed.select(
        *raw.columns,
        F.col(f"m.{fields.id}").alias("id"), F.col(f"m.{fields.text}").alias("text"), F.col(f"m.{fields.label}").alias("label"),
        F.coalesce(event_time, F.col("arrival_time")).alias("event_time"),
        _reason(fields, time_text, event_time).alias("reason"))


def _reason(fields: MessageFields, time_text: Column, event_time: Column) -> Column:
    m = F.col("m")
    blank = F.col("raw").isNull() | F.col("raw").rlike(_BLANK)
    malformed = m.isNull() | F.col(f"m.{CORRUPT}").isNotNull()
    id_, text = F.col(f"m.{fields.id}"), F.col(f"m.{fields.text}")
    return (F.when(blank, "blank_line").when(malformed, "malformed_json")
            .when(id_.isNull() | id_.rlike(_BLANK), "missing_id")
            .when(text.isNull(), "missing_text").when(text.rlike(_BLANK), "empty_text")
            .when(time_text.isNotNull() & event_time.isNull(), "bad_event_time"))


def valid_messages(parsed: DataFrame) -> DataFrame:
    """Rows that can be scored: ``id``, ``text``, ``label``, ``event_time``, ``arrival_time``, ``source``."""
    return parsed.where(F.col("reason").isNull()).select("id", "text", "label", "event_time", "arrival_time", "source")


def quarantined_lines(parsed: DataFrame) -> DataFrame:
    """Rows that cannot be scored: the raw line, the reason, when and where it arrived."""
    return parsed.where(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS)


def window_aggregates(predictions: DataFrame, *, window: str, watermark: str, positive_index: int) -> DataFrame:
    """Per event-time window: messages, predicted rows, mean probability of the positive class, positive share.

    Emitted once per window (append mode) when the watermark (max event time seen - ``watermark``) passes its end.
    """
    positive = F.col("probabilities")[positive_index]
    return (predictions.withWatermark("event_time", watermark)
            .groupBy(F.window("event_time", window).alias("w"))
            .agg(F.count(F.lit(1)).alias("messages"), F.count("prediction").alias("predicted"),
                 F.avg(positive).alias("mean_positive_probability"),
                 F.avg(F.when(F.col("prediction_index") == positive_index, 1.0).when(F.col("prediction").isNotNull(), 0.0))
                 .alias("positive_share"))
            .select(F.col("w.start").alias("window_start"), F.col("w.end").alias("window_end"), "messages", "predicted",
                    "mean_positive_probability", "positive_share"))
