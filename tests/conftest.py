"""Shared fixtures: one session-scoped local[2] SparkSession for the whole suite."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """local[2], UI off, 2 shuffle partitions, warehouse in a temp dir."""
    from dlspark.config import SparkConfig
    from dlspark.spark.session import build_spark_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    cfg = SparkConfig(
        master="local[2]",
        app_name="dlspark-tests",
        driver_memory="2g",
        shuffle_partitions=2,
        ui_enabled=False,
        arrow_max_records_per_batch=64,
        conf={"spark.sql.warehouse.dir": str(warehouse), "spark.default.parallelism": "2"},
    )
    session = build_spark_session(cfg)
    yield session
    session.stop()
