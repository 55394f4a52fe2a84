"""Configuration: YAML layers + CLI overrides -> frozen, validated dataclasses."""
from dlspark.config.loader import PROFILES, apply_override, config_hash, deep_merge, load_config
from dlspark.config.schema import (
    AppConfig,
    FeedConfig,
    ImageIngestConfig,
    InferenceConfig,
    MlflowConfig,
    PathsConfig,
    RunConfig,
    SentimentConfig,
    SparkConfig,
    SplitConfig,
    StreamConfig,
    TextIngestConfig,
    TrainConfig,
)
from dlspark.config.typed import ConfigError, to_dict

__all__ = [
    "PROFILES", "AppConfig", "ConfigError", "FeedConfig", "ImageIngestConfig", "InferenceConfig", "MlflowConfig", "PathsConfig",
    "RunConfig",
    "SentimentConfig", "SparkConfig", "SplitConfig", "StreamConfig", "TextIngestConfig", "TrainConfig", "apply_override", "config_hash",
    "deep_merge", "load_config", "to_dict",
]
