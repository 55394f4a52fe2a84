"""Load test of ``jobs/serve.py``: single-image PNG requests at several concurrencies against the real champion.

    .venv/bin/python bench/serve_bench.py                              # concurrency 1,4,16,64,128, 15 s each
    .venv/bin/python bench/serve_bench.py --soak-seconds 600           # and a 10-minute soak at 80% of capacity
    .venv/bin/python bench/serve_bench.py --seconds 3 --concurrency 1 4   # smoke

Starts ``jobs/serve.py --pipeline image_classification`` (``models:/dlspark-fashion-mnist@champion``, a compact
CNN on 28x28x1, data dir ``data``) as a subprocess on a free loopback port, waits for ``GET /ready``, and drives
it from this process: per concurrency level, that many client threads, each with its own keep-alive
``httpx.Client``, send ``POST /predict`` with the PNG bytes of real test images (rows of the ingested
``data/tables/images`` test split, encoded with PIL) back to back for ``--seconds``, after a short warm-up.
Latency is measured per request by the client (send to full response). Client and server share the machine's
cores; the client is one asyncio loop writing prepared HTTP/1.1 requests on keep-alive connections, so that it takes
little of them. Past capacity the server answers 503 (``serve.max_queue_ms``): those are counted, with their own
latency, apart from the 200s. ``--soak-seconds 600`` then runs an open-loop soak at ``--soak-fraction`` of the
capacity (the best requests/s of a level within the p95 target), sampling the server's resident memory.
Results: ``bench/results/serve.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx  # readiness and /metrics only
import numpy as np
import pyarrow.dataset as ds
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
P95_TARGET_MS = 100.0


def test_pngs(table: Path, n: int) -> list[bytes]:
    """PNG files of the first ``n`` test-split images of the ingested table."""
    rows = ds.dataset(table, format="parquet", partitioning="hive").to_table(
        columns=["pixels", "shape"], filter=ds.field("split") == "test").slice(0, n).to_pylist()
    out = []
    for row in rows:
        h, w, c = row["shape"]
        arr = np.frombuffer(row["pixels"], np.uint8).reshape(h, w, c)
        buf = io.BytesIO()
        Image.fromarray(arr[:, :, 0] if c == 1 else arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, extra: list[str], pipeline: str = "image_classification") -> subprocess.Popen:
    cmd = [sys.executable, "jobs/serve.py", "--pipeline", pipeline, "--set", f"serve.port={port}",
           "--set", "serve.reload_seconds=0", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            r = httpx.get(f"{base}/ready", timeout=1.0)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the server was not ready within {timeout}s")


REQUEST_HEAD = b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, float]:
    """Send one prepared HTTP/1.1 request on a keep-alive connection; (status, Retry-After seconds or 0); the body is
    read and dropped."""
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length, retry_after = 0, 0.0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name = line[:line.find(b":")].lower()
        if name == b"content-length":
            length = int(line[15:])
        elif name == b"retry-after":
            retry_after = float(line[12:])
    await reader.readexactly(length)
    return status, retry_after


class Tally:
    """Per-status latencies (seconds) of the measured requests."""

    def __init__(self) -> None:
        self.latency: dict[int, list[float]] = {}

    def add(self, status: int, seconds: float) -> None:
        self.latency.setdefault(status, []).append(seconds)

    def figures(self, seconds: float) -> dict:
        ok = np.array(self.latency.get(200, [])) * 1000.0
        busy = np.array(self.latency.get(503, [])) * 1000.0
        counts = {str(k): len(v) for k, v in sorted(self.latency.items())}

        def pct(a: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(a, q)), 2) if a.size else None

        return {"seconds": seconds, "ok": int(ok.size), "requests_per_s": round(ok.size / seconds, 1),
                "p50_ms": pct(ok, 50), "p95_ms": pct(ok, 95), "p99_ms": pct(ok, 99),
                "max_ms": round(float(ok.max()), 2) if ok.size else None, "status_counts": counts,
                "rejected_503": int(busy.size), "rejected_per_s": round(busy.size / seconds, 1),
                "p50_503_ms": pct(busy, 50), "p99_503_ms": pct(busy, 99),
                "errors": sum(v for k, v in counts.items() if k not in ("200", "503"))}


def drive(port: int, images: list[bytes], concurrency: int, seconds: float, warmup: float,
          honour_retry_after: bool = True) -> dict:
    """``concurrency`` keep-alive connections, each posting images back to back (closed loop) for
    ``warmup + seconds``; latencies of the requests sent after ``warmup``. The client is one asyncio loop writing
    prepared request bytes, so its own CPU (it shares the machine with the server) stays small. After a 503 a
    client waits the answer's ``Retry-After`` (as retrying HTTP clients do, e.g. urllib3's ``Retry``) unless
    ``honour_retry_after`` is False (every client retries at once: a retry storm)."""
    return drive_requests(port, [REQUEST_HEAD % len(b) + b for b in images], concurrency, seconds, warmup,
                          honour_retry_after)


def drive_requests(port: int, requests: list[bytes], concurrency: int, seconds: float, warmup: float,
                   honour_retry_after: bool = True) -> dict:
    """:func:`drive` with prepared HTTP/1.1 requests (any endpoint), sent in turn."""
    tally = Tally()

    async def client(k: int, measure_from: float, stop_at: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        try:
            while (now := time.perf_counter()) < stop_at:
                retry_after = 0.0
                try:
                    status, retry_after = await post(reader, writer, requests[i % len(requests)])
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status = -1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if now >= measure_from:
                    tally.add(status, time.perf_counter() - now)
                i += concurrency
                if status == 503 and honour_retry_after and retry_after > 0:
                    await asyncio.sleep(min(retry_after, max(0.0, stop_at - time.perf_counter())))
        finally:
            writer.close()

    async def run() -> None:
        start = time.perf_counter()
        await asyncio.gather(*(client(k, start + warmup, start + warmup + seconds) for k in range(concurrency)))

    asyncio.run(run())
    return {"concurrency": concurrency, **tally.figures(seconds)}


def soak(port: int, images: list[bytes], rate: float, seconds: float, connections: int, server_pid: int,
         sample_s: float = 10.0) -> dict:
    """Open loop at ``rate`` requests/s over ``connections`` keep-alive connections for ``seconds``: each request has
    a scheduled send time and its latency counts from then (a slow answer delays the next send on its connection,
    and that delay is charged to the next request: no coordinated omission). Every ``sample_s`` the server's
    resident memory and the window's latencies are recorded."""
    requests = [REQUEST_HEAD % len(b) + b for b in images]
    windows: list[Tally] = []
    rss: list[dict] = []
    interval = connections / rate

    async def client(k: int, start: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        try:
            while True:
                due = start + k * interval / connections + n * interval
                if due - start >= seconds:
                    return
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    status, _ = await post(reader, writer, requests[(k + n * connections) % len(requests)])
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status = -1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                windows[min(int((due - start) // sample_s), len(windows) - 1)].add(status, time.perf_counter() - due)
                n += 1
        finally:
            writer.close()

    async def sampler(start: float) -> None:
        while time.perf_counter() - start < seconds:
            rss.append({"t_s": round(time.perf_counter() - start, 1), "rss_mib": round(rss_mib(server_pid), 1)})
            await asyncio.sleep(sample_s)

    async def run() -> None:
        windows.extend(Tally() for _ in range(int(np.ceil(seconds / sample_s))))
        start = time.perf_counter()
        await asyncio.gather(sampler(start), *(client(k, start) for k in range(connections)))

    asyncio.run(run())
    rss.append({"t_s": round(seconds, 1), "rss_mib": round(rss_mib(server_pid), 1)})
    per_window = [{"t_s": i * sample_s, **{k: v for k, v in w.figures(sample_s).items()
                                           if k in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "rejected_503", "errors")}}
                  for i, w in enumerate(windows)]
    total = Tally()
    for w in windows:
        for status, values in w.latency.items():
            total.latency.setdefault(status, []).extend(values)
    after_first_minute = [r["rss_mib"] for r in rss if r["t_s"] >= 60] or [rss[-1]["rss_mib"]]
    return {"rate": rate, "connections": connections, **total.figures(seconds), "windows": per_window, "rss": rss,
            "rss_growth_after_first_minute_mib": round(after_first_minute[-1] - after_first_minute[0], 1),
            "rss_max_mib": max(r["rss_mib"] for r in rss)}


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (MiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_metric(base: str, name: str) -> dict[str, float]:
    """Samples of one metric family from ``GET /metrics`` (sample name with labels -> value)."""
    out = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 128])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--images", type=int, default=256, help="distinct test images cycled through")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="passed to jobs/serve.py")
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="then an open-loop soak this long (0: none)")
    parser.add_argument("--soak-fraction", type=float, default=0.8,
                        help="soak rate as a fraction of capacity (the best requests/s of a level within the p95 target)")
    parser.add_argument("--soak-connections", type=int, default=32)
    parser.add_argument("--storm", action="store_true", help="clients retry a 503 at once instead of after Retry-After")
    parser.add_argument("--out", default=str(ROOT / "bench/results/serve.json"))
    args = parser.parse_args()
    images = test_pngs(ROOT / "data/tables/images", args.images)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    extra = [x for kv in args.overrides for x in ("--set", kv)]
    proc = start_server(port, extra)
    try:
        t0 = time.monotonic()
        ready = wait_ready(proc, base)
        startup_s = round(time.monotonic() - t0, 1)
        levels = []
        for c in args.concurrency:
            before = server_metric(base, "dlspark_serve_batch_size_")
            level = drive(port, images, c, args.seconds, args.warmup, honour_retry_after=not args.storm)
            after = server_metric(base, "dlspark_serve_batch_size_")
            batches = after.get("dlspark_serve_batch_size_count", 0) - before.get("dlspark_serve_batch_size_count", 0)
            items = after.get("dlspark_serve_batch_size_sum", 0) - before.get("dlspark_serve_batch_size_sum", 0)
            level["mean_batch_size"] = round(items / batches, 2) if batches else None
            level["meets_p95_target"] = level["p95_ms"] is not None and level["p95_ms"] < P95_TARGET_MS
            levels.append(level)
            print(json.dumps(level), flush=True)
        within = [lv["requests_per_s"] for lv in levels if lv["meets_p95_target"]]
        capacity = max(within) if within else None
        soaked = None
        if args.soak_seconds > 0 and capacity:
            soaked = soak(port, images, args.soak_fraction * capacity, args.soak_seconds, args.soak_connections, proc.pid)
            print(json.dumps({k: v for k, v in soaked.items() if k not in ("windows", "rss")}), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    result = {
        "command": "bench/serve_bench.py " + " ".join(sys.argv[1:]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": f"{ready['model']}/{ready['version']} ({ready['uri']})", "startup_s": startup_s,
        "server": f"jobs/serve.py --pipeline image_classification {' '.join(extra)}".strip(),
        "retry_after": "ignored: clients retry a 503 at once" if args.storm else "honoured: a client waits Retry-After after a 503",
        "request": f"one PNG per POST /predict ({len(images)} real test images, {int(np.mean([len(b) for b in images]))} "
                   "bytes on average)",
        "p95_target_ms": P95_TARGET_MS, "levels": levels, "capacity_rps": capacity, "soak": soaked,
        "ready": ready,
        "machine": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
