"""Shared fixtures: one session-scoped local[2] SparkSession for the whole suite.

With ``DLSPARK_TEST_REMOTE`` set (``local[2]``, or ``sc://host:port`` of a running server) that session is a
Spark Connect one: ``make test-connect`` runs the tests marked ``connect`` that way, in a process of their own
(pyspark refuses to start an in-process Connect server beside a classic SparkContext).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.ansi import ANSI_MODES, ansi_conf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """local[2], UI off, 2 shuffle partitions, warehouse in a temp dir; over Spark Connect with DLSPARK_TEST_REMOTE."""
    from dlspark.config import SparkConfig
    from dlspark.spark.session import build_spark_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    cfg = SparkConfig(
        master="local[2]",
        remote=os.environ.get("DLSPARK_TEST_REMOTE") or None,
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


def pytest_collection_modifyitems(config, items):
    """Under Spark Connect only the tests marked ``connect`` can run (the rest may use the SparkContext)."""
    if not os.environ.get("DLSPARK_TEST_REMOTE"):
        return
    skip = pytest.mark.skip(reason="DLSPARK_TEST_REMOTE is set: only tests marked connect run over Spark Connect")
    for item in items:
        if "connect" not in item.keywords and "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(params=ANSI_MODES)
def ansi_mode(request, spark):
    """Run the test with ``spark.sql.ansi.enabled`` true (Spark 4's default) and false (3.5's): bad input must
    become quarantine rows or error columns either way, never a CAST_INVALID_INPUT that stops the job."""
    with ansi_conf(spark, request.param):
        yield request.param
