"""Load test of ``GET/POST /similar`` on ``jobs/serve.py``: latency of similarity answers from the real indexes.

    .venv/bin/python bench/similar_bench.py                          # images and texts, concurrency 1 and 4, 15 s each
    .venv/bin/python bench/similar_bench.py --kinds image --seconds 3  # smoke

Needs the champions' embeddings indexes (``jobs/embed.py --pipeline image_classification`` and ``--pipeline
sentiment``; ``make demo`` builds the image one). Per kind it starts ``jobs/serve.py`` on a free loopback port, waits
until ``/similar`` answers, and drives it with the client of ``bench/serve_bench.py`` (keep-alive connections, one
asyncio loop, closed loop): ``GET /similar?id=KEY&k=10`` for indexed rows (a stored vector and one HNSW search), and
``POST /similar?k=10`` with a PNG of a test image or a tweet as text/plain (decode or tokenize, the embedding graph on
onnxruntime, one search; concurrent POSTs share a forward pass). Latency is per request, send to full response,
client and server on the same 2 cores. The baseline, in the same run: the POSTs again with ``serve.similar.runtime=torch``
(the eager module embeds). Target: p95 < 50 ms. Results: ``bench/results/similar.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lib")]

from bench.serve_bench import drive_requests, free_port, start_server, test_pngs, wait_ready  # noqa: E402

PIPELINES = {"image": "image_classification", "text": "sentiment"}
P95_TARGET_MS = 50.0


def index_keys(data_dir: Path, model: str) -> list[str]:
    """The row keys of the newest version's index of ``model`` (``tables/embeddings/<model>/_index``)."""
    folders = sorted((data_dir / "tables" / "embeddings" / model / "_index").glob(f"{model}-v*"),
                     key=lambda f: int(f.name.rsplit("-v", 1)[1]))
    if not folders:
        raise SystemExit(f"no index of {model}: run ./spark-submit.sh jobs/embed.py first")
    return json.loads((folders[-1] / "keys.json").read_text())["keys"]


def tweets(table: Path, n: int) -> list[bytes]:
    rows = ds.dataset(table, format="parquet", partitioning="hive").to_table(
        columns=["text"], filter=ds.field("split") == "test").slice(0, n)
    return [t.encode() for t in rows.column("text").to_pylist()]


def get_requests(keys: list[str], n: int) -> list[bytes]:
    picked = np.random.default_rng(0).choice(len(keys), min(n, len(keys)), replace=False)
    return [f"GET /similar?id={keys[i]}&k=10 HTTP/1.1\r\nHost: bench\r\n\r\n".encode() for i in picked]


def post_requests(bodies: list[bytes], content_type: str) -> list[bytes]:
    head = "POST /similar?k=10 HTTP/1.1\r\nHost: bench\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n"
    return [head.format(content_type, len(b)).encode() + b for b in bodies]


def wait_similar(base: str, key: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/similar", params={"id": key}, timeout=5.0)
        if r.status_code == 200:
            return r.json()
        time.sleep(0.5)
    raise TimeoutError(f"/similar did not answer within {timeout}s: {r.text}")


def bench_kind(kind: str, data_dir: Path, seconds: float, warmup: float, levels: list[int]) -> dict:
    """GET and POST levels on the server as configured (POSTs embedded on onnxruntime), then the POST levels again on
    a server whose ``serve.similar.runtime`` is torch: the baseline, measured in the same run."""
    model = {"image": "dlspark-fashion-mnist", "text": "dlspark-sentiment"}[kind]
    keys = index_keys(data_dir, model)
    bodies = (test_pngs(data_dir / "tables" / "images", 500) if kind == "image" else tweets(data_dir / "tables" / "text", 500))
    ctype = "image/png" if kind == "image" else "text/plain"
    out: dict = {"kind": kind, "levels": []}
    plans = [("onnx", [("GET by id", get_requests(keys, 500)), (f"POST {ctype}", post_requests(bodies, ctype))]),
             ("torch", [(f"POST {ctype} (torch embeds: baseline)", post_requests(bodies, ctype))])]
    for runtime, requests_by_name in plans:
        port = free_port()
        proc = start_server(port, ["--set", f"serve.similar.runtime={runtime}"], pipeline=PIPELINES[kind])
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, base)
            first = wait_similar(base, keys[0])
            out.update(model=first["model"], version=first["version"], indexed=first["indexed"])
            for name, requests in requests_by_name:
                for c in levels:
                    level = {"request": name, **drive_requests(port, requests, c, seconds, warmup)}
                    out["levels"].append(level)
                    print(json.dumps(level), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", choices=list(PIPELINES), default=list(PIPELINES))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kinds = [bench_kind(k, args.data_dir, args.seconds, args.warmup, args.concurrency) for k in args.kinds]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    out = {"benchmark": "similar", "kinds": kinds, "target": {"p95_ms": P95_TARGET_MS},
           "machine": {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(),
                       "load_average_at_start": [round(v, 1) for v in os.getloadavg()]},
           "command": " ".join([".venv/bin/python bench/similar_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (ROOT / "bench" / "results" / "similar.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
