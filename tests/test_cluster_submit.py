"""spark-submit.sh and the standalone launcher, end to end on a loopback cluster (2 workers x 1 core, 1 GiB).

The module-scoped ``standalone_2_workers`` fixture starts the cluster once for every ``cluster`` test here
and always stops it; ``submit()`` runs ``./spark-submit.sh JOB --profile standalone`` against it.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlspark.spark.packaging import conf_archive, source_digest
from dlspark.spark.standalone import (
    ClusterError,
    ClusterInfo,
    standalone_cluster,
    start_cluster,
    stop_cluster,
)

REPO = Path(__file__).resolve().parents[1]
STACK = "modern" if Path(sys.prefix).name == ".venv-modern" else "classic"  # the stack this test runs on
VENV_PYTHON = str(REPO / (".venv-modern" if STACK == "modern" else ".venv") / "bin" / "python")
SUBMIT_TIMEOUT_S = 300


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (so tests do not clash with `make cluster-up`)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="module")
def standalone_2_workers(tmp_path_factory) -> Iterator[ClusterInfo]:
    """A master and 2 workers (1 core, 1g each) on free loopback ports, stopped after the module."""
    port, webui_port = free_ports(2)
    state_dir = tmp_path_factory.mktemp("standalone")
    cluster = standalone_cluster(
        workers=2, cores=1, memory="1g", port=port, webui_port=webui_port, state_dir=state_dir, python=VENV_PYTHON
    )
    with cluster as info:
        yield info


def submit(
    job: str, *args: str, master_url: str | None = None, timeout_s: float = SUBMIT_TIMEOUT_S,
    submit_opts: tuple[str, ...] = (), dry_run: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``./spark-submit.sh [SUBMIT_OPTS] JOB [--profile standalone --set spark.master=URL] ARGS`` from the
    repo root, with the script's default interpreters: the venv of the stack this test runs on."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env["STACK"] = STACK
    if dry_run:
        env["DLSPARK_SUBMIT_DRY_RUN"] = "1"
    master = ["--profile", "standalone", "--set", f"spark.master={master_url}"] if master_url else []
    cmd = ["./spark-submit.sh", *submit_opts, job, *master, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def output_tail(proc: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-chars:]}\n--- stderr\n{proc.stderr[-chars:]}"


@pytest.mark.cluster
@pytest.mark.slow
def test_smoke_job_runs_python_tasks_on_both_executors(standalone_2_workers, tmp_path):
    out = tmp_path / "smoke.json"
    proc = submit("jobs/spark_smoke.py", "--set", "spark.ui_enabled=false", "--out", str(out), "--min-executors", "2",
                  master_url=standalone_2_workers.master_url)
    assert proc.returncode == 0, output_tail(proc)
    result = json.loads(out.read_text())
    task_pids = {task["pid"] for task in result["tasks"]}
    assert result["executors"] == 2
    assert result["driver_python"] == VENV_PYTHON
    assert result["driver_pid"] not in task_pids
    assert len(task_pids) >= 2, result["tasks"]
    assert {task["python"] for task in result["tasks"]} == {VENV_PYTHON}
    assert all(re.search(r"dlspark-[0-9a-f]{16}\.zip", task["dlspark"]) for task in result["tasks"]), result["tasks"][0]["dlspark"]
    assert sum(task["rows"] for task in result["tasks"]) == 1000
    assert f"distinct executor python pids: {len(task_pids)} " in proc.stdout


@pytest.mark.cluster
@pytest.mark.slow
def test_second_start_on_a_running_state_dir_is_refused(standalone_2_workers):
    with pytest.raises(ClusterError, match="still running"):
        start_cluster(state_dir=standalone_2_workers.state_dir, port=free_ports(1)[0], webui_port=free_ports(1)[0])


@pytest.mark.slow
def test_smoke_job_in_local_mode_uses_the_shipped_bundle(tmp_path):
    out = tmp_path / "smoke.json"
    proc = submit("jobs/spark_smoke.py", "--set", "spark.master=local[2]", "--out", str(out))
    assert proc.returncode == 0, output_tail(proc)
    result = json.loads(out.read_text())
    assert result["driver_pid"] not in {task["pid"] for task in result["tasks"]}
    assert {task["python"] for task in result["tasks"]} == {VENV_PYTHON}
    assert all(re.search(r"dlspark-[0-9a-f]{16}\.zip", task["dlspark"]) for task in result["tasks"])


def test_client_mode_command_uses_profile_master_and_repo_conf():
    proc = submit("jobs/spark_smoke.py", "--out", "x.json", master_url="spark://127.0.0.1:7999", dry_run=True, timeout_s=120)
    assert proc.returncode == 0, output_tail(proc)
    lines = proc.stdout.splitlines()
    assert f"PYSPARK_PYTHON={VENV_PYTHON}" in lines and f"PYSPARK_DRIVER_PYTHON={VENV_PYTHON}" in lines
    assert f"DLSPARK_CONF_DIR={REPO / 'conf'}" in lines
    assert lines[lines.index("--master") + 1] == "spark://127.0.0.1:7999"
    assert lines[lines.index("--deploy-mode") + 1] == "client"
    bundle = Path(lines[lines.index("--py-files") + 1])
    assert bundle.parent == REPO / "build" / "spark-submit" and re.fullmatch(r"dlspark-[0-9a-f]{16}\.zip", bundle.name)
    assert "--archives" not in lines
    expected = ["jobs/spark_smoke.py", "--profile", "standalone", "--set", "spark.master=spark://127.0.0.1:7999", "--out", "x.json"]
    assert lines[-7:] == expected
    assert lines[lines.index("--driver-java-options") + 1] == f"-Dlog4j2.configurationFile=file:{REPO / 'conf' / 'log4j2.properties'}"
    own = submit("jobs/spark_smoke.py", "--out", "x.json", submit_opts=("--driver-java-options", "-Dx=1"), dry_run=True)
    lines = own.stdout.splitlines()
    assert lines.count("--driver-java-options") == 1 and lines[lines.index("--driver-java-options") + 1] == "-Dx=1"



def test_cluster_mode_command_ships_conf_and_merges_archives():
    proc = submit(
        "jobs/spark_smoke.py", "--profile", "yarn", "--set", "spark.deploy_mode=cluster", "--out", "x.json",
        submit_opts=("--archives", "env.tar.gz#environment", "--conf", "spark.yarn.queue=ml"), dry_run=True, timeout_s=120,
    )
    assert proc.returncode == 0, output_tail(proc)
    lines = proc.stdout.splitlines()
    assert lines[lines.index("--master") + 1] == "yarn"
    assert lines[lines.index("--deploy-mode") + 1] == "cluster"
    assert lines[lines.index("--archives") + 1] == f"{REPO / 'build' / 'spark-submit' / 'conf.zip'}#conf,env.tar.gz#environment"
    assert "spark.yarn.appMasterEnv.DLSPARK_CONF_DIR=./conf" in lines
    assert "spark.pyspark.driver.python=./environment/bin/python" in lines
    assert "spark.yarn.queue=ml" in lines
    assert lines[-7:] == ["jobs/spark_smoke.py", "--profile", "yarn", "--set", "spark.deploy_mode=cluster", "--out", "x.json"]


def test_bad_config_exits_2_before_spark_starts(tmp_path):
    proc = submit("jobs/spark_smoke.py", "--profile", "prod", "--out", str(tmp_path / "x.json"), timeout_s=60)
    assert proc.returncode == 2, output_tail(proc)
    assert "profile 'prod': no such file" in proc.stderr
    assert "available: connect, k8s, local, standalone, yarn" in proc.stderr


def test_missing_job_file_exits_2():
    proc = submit("jobs/no_such_job.py", timeout_s=60)
    assert proc.returncode == 2
    assert "job file not found: jobs/no_such_job.py" in proc.stderr


def test_source_digest_tracks_lib_and_pipelines_but_not_caches(tmp_path):
    (tmp_path / "lib" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "lib" / "pkg" / "a.py").write_text("A = 1\n")
    first = source_digest(tmp_path)
    (tmp_path / "lib" / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert source_digest(tmp_path) == first
    (tmp_path / "pipelines" / "p.py").write_text("")
    assert source_digest(tmp_path) != first


def test_conf_archive_holds_the_layers_relative_to_conf(tmp_path):
    archive = conf_archive(REPO / "conf", tmp_path)
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"base.yaml", "profiles/standalone.yaml", "profiles/local.yaml"} <= names
    with pytest.raises(RuntimeError, match="has no base.yaml"):
        conf_archive(tmp_path, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"workers": 0}, "workers and cores must be >= 1"), ({"cores": 0}, "must be >= 1"), ({"memory": "lots"}, "not a worker memory size")],
)
def test_start_rejects_bad_requests(tmp_path, kwargs, message):
    with pytest.raises(ClusterError, match=message):
        start_cluster(state_dir=tmp_path, **kwargs)


def test_start_refuses_a_taken_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port {port} on 127.0.0.1 is in use"):
            start_cluster(state_dir=tmp_path, port=port, webui_port=free_ports(1)[0])
    assert not list(tmp_path.glob("*.pid"))


def test_stop_is_idempotent_on_an_empty_or_stale_state_dir(tmp_path):
    stop_cluster(tmp_path / "never-started")
    (tmp_path / "master.pid").write_text(f"{os.getpid()}\n")  # a live pid that is no Spark daemon
    stop_cluster(tmp_path)
    assert not (tmp_path / "master.pid").exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_ingest_images_job_on_standalone_cluster(standalone_2_workers, tmp_path):
    """The real ingest job, shipped by spark-submit.sh, decodes on the cluster's executors."""
    import pyarrow.parquet as pq

    from tests.image_zoo import good_tree, write_tree

    write_tree(tmp_path / "landing", good_tree(3) | {"cat/notes.jpg": b"plain text, not an image\n"})
    proc = submit(
        "jobs/ingest_images.py",
        "--set", f"paths.data_dir={tmp_path}", "--set", "ingest_images.input=landing",
        "--set", "ingest_images.size=[16,16]", "--set", "ingest_images.labels=null",
        "--set", "ingest_images.color_mode=RGB",
        master_url=standalone_2_workers.master_url,
    )
    assert proc.returncode == 0, output_tail(proc)
    assert "7 seen = 6 written + 0 duplicates + 1 quarantined" in proc.stdout, output_tail(proc)
    table = pq.read_table(tmp_path / "tables/images")
    assert table.num_rows == 6 and set(table.column("label").to_pylist()) == {"cat", "dog"}


@pytest.mark.cluster
@pytest.mark.slow
def test_batch_inference_job_ships_the_model_to_cluster_executors(standalone_2_workers, tmp_path):
    """Executors score from the archive the driver shipped (the spec they get has no local model folder)."""
    import pyarrow.parquet as pq

    from tests.inference_models import register_image_model
    from tests.test_batch_inference import N_IMAGES, write_image_table

    register_image_model(tmp_path)
    write_image_table(tmp_path / "tables" / "images")
    proc = submit(
        "jobs/batch_inference.py", "--pipeline", "image_classification",
        "--set", f"paths.data_dir={tmp_path}", "--set", "mlflow.registered_model=test-images",
        "--set", "inference.input=tables/images", master_url=standalone_2_workers.master_url,
    )
    assert proc.returncode == 0, output_tail(proc)
    assert "shipped model models:/test-images/1 to executors" in proc.stderr + proc.stdout, output_tail(proc)
    assert f"rows {N_IMAGES} = {N_IMAGES - 2} predicted + 2 errors" in proc.stdout, output_tail(proc)
    assert pq.read_table(tmp_path / "tables/predictions/test-images").num_rows == N_IMAGES


def test_a_source_change_builds_a_new_bundle_and_leaves_the_running_one_alone(tmp_path, monkeypatch):
    """A job imports from its --py-files zip by path for as long as it runs: a later submit with other sources must
    not rewrite that file (it did: the running job failed with zipimport's "bad local file header")."""
    from dlspark.spark import packaging

    digests = iter(["a" * 16, "a" * 16, "b" * 16] + [f"{i:016x}" for i in range(5)])
    monkeypatch.setattr(packaging, "source_digest", lambda repo: next(digests))

    def fake_wheel(repo, out_dir):  # noqa: ANN001, ANN202
        wheel = out_dir / "dlspark-0.1.0-py3-none-any.whl"
        wheel.write_bytes(os.urandom(64))
        return wheel

    monkeypatch.setattr(packaging, "build_wheel", fake_wheel)
    first = packaging.py_files_bundle(REPO, tmp_path)
    content = first.read_bytes()
    assert packaging.py_files_bundle(REPO, tmp_path) == first                       # same sources: reused
    second = packaging.py_files_bundle(REPO, tmp_path)
    assert second != first and first.read_bytes() == content                        # the old bundle is untouched
    for _ in range(5):
        packaging.py_files_bundle(REPO, tmp_path)
    assert len(list(tmp_path.glob("dlspark-*.zip"))) == packaging.KEEP_BUNDLES
