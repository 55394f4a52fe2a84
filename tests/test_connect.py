"""What differs between classic and Spark Connect sessions, asked through ``dlspark.spark.connect``.

Marked ``connect``: ``make test`` runs these on a classic session, ``make test-connect`` over Spark Connect.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from dlspark.config import ConfigError, SparkConfig
from dlspark.inference.streaming import kafka_package
from dlspark.spark import connect
from dlspark.spark.session import connect_conf_pairs

pytestmark = pytest.mark.connect


def test_the_session_kind_follows_DLSPARK_TEST_REMOTE(spark):  # noqa: N802 - the variable's name
    assert connect.is_connect(spark) is bool(os.environ.get("DLSPARK_TEST_REMOTE"))
    assert connect.spark_master(spark) == "local[2]"
    assert connect.runs_in_process(spark) and connect.executors_share_files(spark)


def test_parallelism_is_the_fixtures_two_cores_by_conf_and_by_measurement(spark):
    assert connect.default_parallelism(spark) == 2
    assert connect.measured_parallelism(spark) == 2


def test_data_source_probe_tells_present_from_missing_sources(spark):
    assert connect.data_source_available(spark, "parquet")
    assert not connect.data_source_available(spark, "no.such.source")
    assert not connect.data_source_available(spark, "kafka")  # the connector jar is not on this classpath


def test_kafka_coordinates_follow_the_running_spark_and_scala(spark):
    scala = connect.scala_binary_version(spark)
    assert scala == connect.default_scala(spark.version)  # pip's pyspark: 2.12 for 3.5, 2.13 for 4.x
    assert kafka_package(spark.version, scala) == f"org.apache.spark:spark-sql-kafka-0-10_{scala}:{spark.version}"
    assert (connect.default_scala("3.5.9"), connect.default_scala("4.3.0")) == ("2.12", "2.13")


def test_cancelling_a_job_group_interrupts_its_running_job(spark):
    from pyspark.sql import functions as F

    def slow(batches):
        import time as t

        for batch in batches:
            t.sleep(30)
            yield batch

    errors: list[BaseException] = []

    def run() -> None:
        with connect.job_group(spark, "dlspark-test-cancel", "a job to cancel"):
            try:
                spark.range(0, 2, 1, numPartitions=2).mapInArrow(slow, "id long").agg(F.count("id")).collect()
            except Exception as exc:  # noqa: BLE001 - the cancellation is what the test waits for
                errors.append(exc)

    worker = threading.Thread(target=run)
    started = time.monotonic()
    worker.start()
    time.sleep(6)  # the job is running its sleeping tasks
    connect.cancel_job_group(spark, "dlspark-test-cancel")
    worker.join(timeout=60)
    assert not worker.is_alive() and errors, "the job was not cancelled"
    assert time.monotonic() - started < 30  # cancelled, not finished


def test_require_classic_names_the_alternative_only_over_connect(spark):
    if connect.is_connect(spark):
        with pytest.raises(ConfigError, match="Spark Connect does not have: use the arrow feeder"):
            connect.require_classic(spark, "petastorm", "the arrow feeder")
    else:
        connect.require_classic(spark, "petastorm", "the arrow feeder")  # a classic session has all it needs


def test_connect_settings_for_an_in_process_and_a_remote_server():
    local = connect_conf_pairs(SparkConfig(remote="local[2]", shuffle_partitions=3, conf={"spark.x.y": "1"}))
    assert "spark.master" not in local and local["spark.driver.memory"] == "4g" and local["spark.x.y"] == "1"
    remote = connect_conf_pairs(SparkConfig(remote="sc://spark.example.com:15002", conf={"spark.x.y": "1"}))
    assert remote["spark.sql.shuffle.partitions"] == "8" and remote["spark.x.y"] == "1"
    assert not any(k.startswith(("spark.driver.", "spark.executor.", "spark.ui.")) for k in remote)
    with pytest.raises(ConfigError, match="not a Spark Connect address"):
        SparkConfig(remote="http://host:15002")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, server, timeout_s: float = 120.0) -> None:  # noqa: ANN001 - a Popen
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "the Connect server exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"no Connect server on port {port} after {timeout_s} s")


@pytest.mark.slow
def test_a_job_scores_against_a_separate_connect_server_shipping_the_model_as_an_artifact(tmp_path):
    """sc://host:port, as against a cluster: the job's process has no Spark of its own, only spark.sql.* settings
    reach the server, and the model travels with addArtifacts (the server's executors cannot read the client's
    folders)."""
    import signal
    import subprocess
    import sys

    if not os.environ.get("DLSPARK_TEST_REMOTE"):
        pytest.skip("runs in make test-connect: it needs pyspark 4's Connect client and starts a server process")
    import pyspark

    from tests.conftest import REPO
    from tests.inference_models import register_image_model
    from tests.stacks import child_connect
    from tests.test_batch_inference import N_IMAGES, write_image_table

    spark_home = os.path.dirname(pyspark.__file__)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_HOME": spark_home, "HF_HUB_OFFLINE": "1"}
    child_connect(env)  # drop this process's Connect state
    env.pop("SPARK_TESTING")
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed with the server
    server = subprocess.Popen([f"{spark_home}/bin/spark-submit", "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
                               "--master", "local[2]", "--driver-memory", "1g", "--conf", f"spark.connect.grpc.binding.port={port}",
                               "--conf", "spark.ui.enabled=false"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, server)
        register_image_model(tmp_path)
        write_image_table(tmp_path / "tables" / "images")
        sets = [f"paths.data_dir={tmp_path}", "mlflow.registered_model=test-images", "inference.input=tables/images",
                "inference.batch_size=8", f"spark.remote=sc://localhost:{port}"]
        job = subprocess.run([sys.executable, "jobs/batch_inference.py", "--pipeline", "image_classification",
                              *[x for s in sets for x in ("--set", s)]], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        out = job.stdout + job.stderr
        assert job.returncode == 0, out[-3000:]
        assert "spark connect session: remote=sc://localhost" in out and "shipped model" in out
        assert f"rows {N_IMAGES} = {N_IMAGES - 2} predicted + 2 errors" in out
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
