"""Start and stop a Spark standalone cluster (one master, N workers) on this machine, for tests and demos.

pip's pyspark has ``bin/spark-class`` but not ``sbin/start-master.sh``, so the master and workers are
launched with ``spark-class`` as background process groups; pids and logs live in ``state_dir``.

    python -m dlspark.spark.standalone up --workers 2 --cores 1 --memory 1g   # make cluster-up
    python -m dlspark.spark.standalone status
    python -m dlspark.spark.standalone down                                   # make cluster-down

Jobs reach it with ``--profile standalone`` (master ``spark://127.0.0.1:7077``); on other ports add
``--set spark.master=spark://127.0.0.1:PORT``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / f"dlspark-standalone-{os.getuid()}"
_MEMORY = re.compile(r"^\d+[mgt]$", re.IGNORECASE)
_DAEMON_CLASSES = (b"org.apache.spark.deploy.master.Master", b"org.apache.spark.deploy.worker.Worker")
_CHILDREN: dict[int, subprocess.Popen] = {}  # daemons started by this process, reaped by stop_cluster


class ClusterError(RuntimeError):
    """The standalone cluster could not be started or is in an unexpected state."""


@dataclass(frozen=True)
class ClusterInfo:
    """A running standalone cluster: where to submit, where to look, what to stop."""

    master_url: str
    web_ui_url: str
    state_dir: str
    workers: int
    pids: tuple[int, ...]


def spark_home() -> Path:
    """``$SPARK_HOME``, else the pip pyspark package directory (it has ``bin/spark-class``)."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def start_cluster(
    *,
    workers: int = 2,
    cores: int = 1,
    memory: str = "1g",
    host: str = "127.0.0.1",
    port: int = 7077,
    webui_port: int = 8080,
    state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
    python: str | None = None,
    timeout_s: float = 120.0,
) -> ClusterInfo:
    """Launch a master and ``workers`` workers, wait until all are ALIVE, and return how to reach them.

    Parameters
    ----------
    workers, cores, memory
        Number of workers, and the cores and memory (JVM size, e.g. ``1g``) each offers to executors.
    host, port, webui_port
        Bind address, master RPC port and master web UI port (the readiness check polls its ``/json/``).
    state_dir
        Folder for pid files, ``cluster.json``, daemon logs and worker work dirs.
    python
        ``PYSPARK_PYTHON`` for executors; default: this interpreter.
    timeout_s
        How long to wait for the workers to register before giving up.

    Raises
    ------
    ClusterError
        When a cluster from ``state_dir`` is still running, a port is taken, or the workers do not
        register in time (with the tails of the daemon logs). Anything started is stopped first.
    """
    _check_request(workers, cores, memory)
    state = Path(state_dir)
    if _live_pids(state):
        raise ClusterError(f"a cluster from {state} is still running; stop it: python -m dlspark.spark.standalone down --state-dir {state}")
    for p in (port, webui_port):
        _check_port_free(host, p)
    stop_cluster(state)  # clears stale pid files of a crashed run
    state.mkdir(parents=True, exist_ok=True)
    env = _daemon_env(host, python or sys.executable)
    info = ClusterInfo(f"spark://{host}:{port}", f"http://{host}:{webui_port}", str(state), workers, ())
    try:
        pids = [_launch(state, "master", _master_args(host, port, webui_port), env)]
        for i in range(1, workers + 1):
            pids.append(_launch(state, f"worker-{i}", _worker_args(info.master_url, host, cores, memory, state / f"worker-{i}"), env))
        info = ClusterInfo(info.master_url, info.web_ui_url, str(state), workers, tuple(pids))
        (state / "cluster.json").write_text(json.dumps(asdict(info), indent=2))
        _wait_alive(info, timeout_s)
    except BaseException:
        stop_cluster(state)
        raise
    log.info("standalone cluster up: %s (%d workers x %d cores, %s), UI %s", info.master_url, workers, cores, memory, info.web_ui_url)
    return info


def stop_cluster(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, timeout_s: float = 20.0) -> None:
    """Stop the daemons recorded in ``state_dir`` (SIGTERM to each process group, SIGKILL after ``timeout_s``).

    Idempotent: missing pid files and already-exited processes are fine. Logs are kept.
    """
    state = Path(state_dir)
    pids = _recorded_pids(state)
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        if not _wait_gone(pid, deadline):
            log.warning("pid %d ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout_s)
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, time.monotonic() + 5)
    for path in [*state.glob("*.pid"), state / "cluster.json"]:
        path.unlink(missing_ok=True)
    if pids:
        log.info("standalone cluster in %s stopped (pids %s)", state, ", ".join(map(str, pids)))


@contextlib.contextmanager
def standalone_cluster(**kwargs) -> Iterator[ClusterInfo]:
    """Context manager around :func:`start_cluster` / :func:`stop_cluster` (same keyword arguments)."""
    info = start_cluster(**kwargs)
    try:
        yield info
    finally:
        stop_cluster(info.state_dir)


def cluster_status(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict:
    """What ``state_dir`` records, which recorded pids are alive, and the master's view (``/json/``) if reachable."""
    state = Path(state_dir)
    info_file = state / "cluster.json"
    status: dict = json.loads(info_file.read_text()) if info_file.is_file() else {"state_dir": str(state)}
    status["live_pids"] = _live_pids(state)
    if status["live_pids"] and "web_ui_url" in status:
        master = _master_json(status["web_ui_url"])
        status["alive_workers"] = None if master is None else _alive_workers(master)
    return status


def _check_request(workers: int, cores: int, memory: str) -> None:
    if workers < 1 or cores < 1:
        raise ClusterError(f"workers and cores must be >= 1, got workers={workers}, cores={cores}")
    if not _MEMORY.match(memory):
        raise ClusterError(f"memory {memory!r} is not a worker memory size; use e.g. 1g or 512m")


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ClusterError(
                f"port {port} on {host} is in use ({exc.strerror}): stop what holds it "
                "(python -m dlspark.spark.standalone down) or pick other ports (--port/--webui-port)"
            ) from exc


def _daemon_env(host: str, python: str) -> dict[str, str]:
    env = dict(os.environ, SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=host, PYSPARK_PYTHON=python)
    # Fail instead of silently moving to port+1 when a port is taken (the readiness check polls a fixed port).
    env["SPARK_MASTER_OPTS"] = (env.get("SPARK_MASTER_OPTS", "") + " -Dspark.port.maxRetries=0").strip()
    env.pop("PYSPARK_DRIVER_PYTHON", None)
    return env


def _master_args(host: str, port: int, webui_port: int) -> list[str]:
    return ["org.apache.spark.deploy.master.Master", "--host", host, "--port", str(port), "--webui-port", str(webui_port)]


def _worker_args(master_url: str, host: str, cores: int, memory: str, work_dir: Path) -> list[str]:
    work_dir.mkdir(parents=True, exist_ok=True)
    return [
        "org.apache.spark.deploy.worker.Worker", master_url, "--cores", str(cores), "--memory", memory,
        "--host", host, "--webui-port", "0", "--work-dir", str(work_dir),
    ]


def _launch(state: Path, name: str, args: list[str], env: dict[str, str]) -> int:
    spark_class = Path(env["SPARK_HOME"]) / "bin" / "spark-class"
    with open(state / f"{name}.log", "wb") as out:
        proc = subprocess.Popen(
            [str(spark_class), *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    (state / f"{name}.pid").write_text(f"{proc.pid}\n")
    log.debug("started %s: pid %d, log %s", name, proc.pid, state / f"{name}.log")
    return proc.pid


def _wait_alive(info: ClusterInfo, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    alive = 0
    while time.monotonic() < deadline:
        dead = [pid for pid in info.pids if not _is_running(pid)]
        if dead:
            raise ClusterError(f"spark daemon(s) {dead} exited during start-up\n{_log_tails(Path(info.state_dir))}")
        master = _master_json(info.web_ui_url)
        alive = 0 if master is None else _alive_workers(master)
        if alive >= info.workers:
            return
        time.sleep(0.5)
    raise ClusterError(
        f"only {alive} of {info.workers} workers ALIVE at {info.web_ui_url}/json/ after {timeout_s:.0f} s "
        f"(slow machine? raise timeout_s)\n{_log_tails(Path(info.state_dir))}"
    )


def _master_json(web_ui_url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{web_ui_url}/json/", timeout=2) as resp:
            return json.loads(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _alive_workers(master: dict) -> int:
    return sum(1 for w in master.get("workers", []) if w.get("state") == "ALIVE")


def _log_tails(state: Path, lines: int = 15) -> str:
    parts = []
    for path in sorted(state.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


def _recorded_pids(state: Path) -> list[int]:
    return [int(text) for path in sorted(state.glob("*.pid")) if (text := path.read_text().strip()).isdigit()]


def _live_pids(state: Path) -> list[int]:
    return [pid for pid in _recorded_pids(state) if _is_running(pid)]


def _is_running(pid: int) -> bool:
    """True while ``pid`` is a live Spark daemon (not a zombie, not a reused pid)."""
    if pid in _CHILDREN:
        return _CHILDREN[pid].poll() is None
    if not Path("/proc/self").exists():  # no procfs (macOS): existence is the best we can check
        return _pid_exists(pid)
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
        return state != "Z" and any(name in cmdline for name in _DAEMON_CLASSES)
    except (OSError, IndexError):
        return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (daemon plus its executors), unless ``pid`` was reused."""
    if not _is_running(pid) and _pid_exists(pid):  # _is_running first: it reaps our own exited children
        log.warning("pid %d is no longer a Spark daemon; not signalling it", pid)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_gone(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if not _is_running(pid):
            child = _CHILDREN.pop(pid, None)
            if child is not None:
                child.wait()
            return True
        time.sleep(0.2)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """``up`` (idempotent), ``down`` and ``status`` for the cluster recorded in ``--state-dir``."""
    logging.basicConfig(level=logging.INFO, format="[standalone] %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    if args.command == "down":
        stop_cluster(args.state_dir)
    elif args.command == "status":
        log.info("%s", json.dumps(cluster_status(args.state_dir), indent=2))
    elif _live_pids(Path(args.state_dir)):
        log.info("already running: %s", json.dumps(cluster_status(args.state_dir)))
    else:
        try:
            start_cluster(workers=args.workers, cores=args.cores, memory=args.memory, host=args.host,
                          port=args.port, webui_port=args.webui_port, state_dir=args.state_dir)
        except ClusterError as exc:
            log.error("%s", exc)
            return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlspark.spark.standalone", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="pids, logs, work dirs (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="1g", help="memory per worker, e.g. 1g")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7077, help="master RPC port")
    parser.add_argument("--webui-port", type=int, default=8080, help="master web UI port")
    return parser


if __name__ == "__main__":
    sys.exit(main())
