"""Load test of ``jobs/serve.py``: single-image PNG requests at several concurrencies against the real champion.

    .venv/bin/python bench/serve_bench.py                              # concurrency 1,4,16,64, 15 s each
    .venv/bin/python bench/serve_bench.py --seconds 3 --concurrency 1 4   # smoke

Starts ``jobs/serve.py --pipeline image_classification`` (``models:/dlspark-fashion-mnist@champion``, a compact
CNN on 28x28x1, data dir ``data``) as a subprocess on a free loopback port, waits for ``GET /ready``, and drives
it from this process: per concurrency level, that many client threads, each with its own keep-alive
``httpx.Client``, send ``POST /predict`` with the PNG bytes of real test images (rows of the ingested
``data/tables/images`` test split, encoded with PIL) back to back for ``--seconds``, after a short warm-up.
Latency is measured per request by the client (send to full response). Client and server share the machine's
cores. Results: ``bench/results/serve.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
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


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "jobs/serve.py", "--pipeline", "image_classification", "--set", f"serve.port={port}",
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


def drive(base: str, images: list[bytes], concurrency: int, seconds: float, warmup: float) -> dict:
    """``concurrency`` threads posting images back to back; latencies of the requests after ``warmup``."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    codes: list[dict[int, int]] = [{} for _ in range(concurrency)]
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=30.0) as http:
            i = k
            while (now := time.monotonic()) < stop_at:
                t0 = time.perf_counter()
                try:
                    status = http.post("/predict", content=images[i % len(images)],
                                       headers={"content-type": "image/png"}).status_code
                except httpx.HTTPError:
                    status = -1
                elapsed = time.perf_counter() - t0
                if now >= measure_from:
                    codes[k][status] = codes[k].get(status, 0) + 1
                    if status == 200:
                        latencies[k].append(elapsed)
                i += concurrency

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array([x for per in latencies for x in per]) * 1000.0
    status: dict[str, int] = {}
    for per in codes:
        for code, count in per.items():
            status[str(code)] = status.get(str(code), 0) + count
    ok = int(lat.size)
    pct = {f"p{q}_ms": round(float(np.percentile(lat, q)), 2) if ok else None for q in (50, 95, 99)}
    return {"concurrency": concurrency, "seconds": seconds, "ok": ok, "requests_per_s": round(ok / seconds, 1),
            **pct, "max_ms": round(float(lat.max()), 2) if ok else None, "status_counts": status,
            "errors": sum(v for k, v in status.items() if k != "200"), "rejected_503": status.get("503", 0)}


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
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--images", type=int, default=256, help="distinct test images cycled through")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="passed to jobs/serve.py")
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
            level = drive(base, images, c, args.seconds, args.warmup)
            after = server_metric(base, "dlspark_serve_batch_size_")
            batches = after.get("dlspark_serve_batch_size_count", 0) - before.get("dlspark_serve_batch_size_count", 0)
            items = after.get("dlspark_serve_batch_size_sum", 0) - before.get("dlspark_serve_batch_size_sum", 0)
            level["mean_batch_size"] = round(items / batches, 2) if batches else None
            level["meets_p95_target"] = level["p95_ms"] is not None and level["p95_ms"] < P95_TARGET_MS
            levels.append(level)
            print(json.dumps(level), flush=True)
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
        "request": f"one PNG per POST /predict ({len(images)} real test images, {int(np.mean([len(b) for b in images]))} "
                   "bytes on average), keep-alive httpx client per thread",
        "p95_target_ms": P95_TARGET_MS, "levels": levels,
        "machine": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
