"""dlspark.spark.session: the spark.* settings implied by SparkConfig (pure) and the live test session."""
from __future__ import annotations

import os
import sys

import pytest

from dlspark.config import SparkConfig
from dlspark.spark.session import executor_python, spark_conf_pairs


def test_arrow_is_enabled_with_the_configured_batch_size():
    conf = spark_conf_pairs(SparkConfig(arrow_max_records_per_batch=128))
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "128"


def test_core_settings_are_strings_from_the_config():
    cfg = SparkConfig(master="local[3]", app_name="t", driver_memory="3g", shuffle_partitions=5, ui_enabled=False)
    conf = spark_conf_pairs(cfg)
    assert {k: conf[k] for k in ("spark.master", "spark.app.name", "spark.driver.memory")} == {
        "spark.master": "local[3]", "spark.app.name": "t", "spark.driver.memory": "3g",
    }
    assert conf["spark.sql.shuffle.partitions"] == "5"
    assert conf["spark.ui.enabled"] == "false"
    assert all(isinstance(v, str) for v in conf.values())


def test_executor_cores_and_instances_only_when_set():
    assert "spark.executor.cores" not in spark_conf_pairs(SparkConfig())
    assert "spark.executor.instances" not in spark_conf_pairs(SparkConfig())
    conf = spark_conf_pairs(SparkConfig(executor_cores=4, executor_instances=3))
    assert (conf["spark.executor.cores"], conf["spark.executor.instances"]) == ("4", "3")


def test_configured_python_wins_over_environment(monkeypatch):
    monkeypatch.setenv("PYSPARK_PYTHON", "/env/python")
    conf = spark_conf_pairs(SparkConfig(python="./environment/bin/python"))
    assert conf["spark.pyspark.python"] == "./environment/bin/python"


def test_python_falls_back_to_environment_then_this_interpreter(monkeypatch):
    monkeypatch.setenv("PYSPARK_PYTHON", "/env/python")
    assert spark_conf_pairs(SparkConfig())["spark.pyspark.python"] == "/env/python"
    monkeypatch.delenv("PYSPARK_PYTHON")
    assert executor_python(SparkConfig()) == sys.executable


def test_driver_python_is_set_in_client_mode_only():
    assert spark_conf_pairs(SparkConfig(deploy_mode="client"))["spark.pyspark.driver.python"] == sys.executable
    conf = spark_conf_pairs(SparkConfig(deploy_mode="cluster", python="python3"))
    assert "spark.pyspark.driver.python" not in conf
    assert conf["spark.submit.deployMode"] == "cluster"


def test_no_gpu_settings_without_gpus():
    conf = spark_conf_pairs(SparkConfig())
    assert not [k for k in conf if "resource.gpu" in k]


@pytest.mark.parametrize(
    ("executor_gpus", "task_gpus", "cores", "want_task"),
    [(1, 0.0, 4, "0.25"), (2, 1.0, 4, "1.0"), (1, 0.0, None, "1.0")],
)
def test_gpu_amounts(executor_gpus, task_gpus, cores, want_task):
    cfg = SparkConfig(executor_gpus=executor_gpus, task_gpus=task_gpus, executor_cores=cores)
    conf = spark_conf_pairs(cfg)
    assert conf["spark.executor.resource.gpu.amount"] == str(executor_gpus)
    assert conf["spark.task.resource.gpu.amount"] == want_task
    assert "spark.executor.resource.gpu.discoveryScript" not in conf


def test_gpu_discovery_script_is_passed_through():
    conf = spark_conf_pairs(SparkConfig(executor_gpus=1, gpu_discovery_script="/opt/getGpus.sh"))
    assert conf["spark.executor.resource.gpu.discoveryScript"] == "/opt/getGpus.sh"


def test_extra_conf_is_passed_through_and_wins():
    extra = {"spark.sql.ansi.enabled": "true", "spark.sql.shuffle.partitions": "7"}
    conf = spark_conf_pairs(SparkConfig(shuffle_partitions=3, conf=extra))
    assert conf["spark.sql.ansi.enabled"] == "true"
    assert conf["spark.sql.shuffle.partitions"] == "7"


def test_live_session_has_arrow_and_two_shuffle_partitions(spark):
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert spark.sparkContext.master == "local[2]"
    assert spark.sparkContext.getConf().get("spark.pyspark.python") == os.environ["PYSPARK_PYTHON"]
