"""Ingest throughput vs a bare single-process loop on the same data, measured in one run.

    .venv/bin/python bench/ingest_bench.py images --files 20000      # 256x256 JPEGs -> 224x224 RGB
    .venv/bin/python bench/ingest_bench.py text --rows 200000        # tweets CSV, replicated with distinct texts
    .venv/bin/python bench/ingest_bench.py text --rows 1000000 --name text-1m   # same at 5x: fixed costs amortised
    .venv/bin/python bench/ingest_bench.py report                    # rewrite BENCHMARKS.md from bench/results/

Baseline: the same per-item work (decode+resize, or normalise+tokenize) in one Python process, with
no Spark, times the number of Spark cores. Ours: the full pipeline (listing, ledger, decode, dedup,
Parquet write, quarantine, summary) on local[CORES]; session start-up is excluded. Peak RSS is
sampled every 0.2 s over the whole process tree (driver, JVM, Python workers).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CORES = 2
log = logging.getLogger("bench")


class PeakRss:
    """Context manager sampling the RSS of this process and all its descendants."""

    def __enter__(self) -> "PeakRss":
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me, *me.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _write_jpeg(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    path, seed, size = args
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)  # smooth-ish content, realistic JPEG size
    img = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
    noise = rng.integers(0, 24, (size, size, 3), dtype=np.uint8)
    Image.fromarray(np.asarray(img) + noise).save(path, "JPEG", quality=90)


def make_images(root: Path, n: int, size: int) -> list[Path]:
    """n distinct JPEGs in 10 class folders under root (kept between runs)."""
    paths = [root / f"class{i % 10}" / f"{i:06d}.jpg" for i in range(n)]
    todo = [(p, i, size) for i, p in enumerate(paths) if not p.exists()]
    for d in {p.parent for p in paths}:
        d.mkdir(parents=True, exist_ok=True)
    if todo:
        with mp.Pool(CORES) as pool:
            pool.map(_write_jpeg, todo, chunksize=256)
    return paths


def bare_images(paths: list[Path], target: int) -> float:
    """Images/s of a plain Pillow read+decode+resize loop in this process."""
    from PIL import Image

    start = time.perf_counter()
    for p in paths:
        img = Image.open(io.BytesIO(p.read_bytes()))
        img.draft("RGB", (target, target))
        arr = np.asarray(img.convert("RGB").resize((target, target), Image.Resampling.BILINEAR))
        assert arr.shape == (target, target, 3)
    return len(paths) / (time.perf_counter() - start)


def bare_images_written(paths: list[Path], target: int, out: Path) -> float:
    """Images/s of the bare loop plus what any ingest must also do per image: sha256 of the file (dedup key)
    and a Parquet write of the decoded pixels (plain blobs, as ours), 512 rows per row group, in this process.

    Not a baseline: the ceiling a no-Spark ingest reaches on this machine, to show how much of the gap
    to the bare loop is the cost of writing the table at all."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from dlspark.tables.staged import writer_options

    schema = pa.schema([("path", pa.string()), ("sha256", pa.string()), ("pixels", pa.binary())])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    with pq.ParquetWriter(out / "part-0.parquet", schema, **writer_options(schema, ["pixels"])) as writer:
        for i in range(0, len(paths), 512):
            rows: dict[str, list] = {"path": [], "sha256": [], "pixels": []}
            for p in paths[i:i + 512]:
                data = p.read_bytes()
                img = Image.open(io.BytesIO(data))
                img.draft("RGB", (target, target))
                arr = np.asarray(img.convert("RGB").resize((target, target), Image.Resampling.BILINEAR))
                rows["path"].append(str(p))
                rows["sha256"].append(hashlib.sha256(data).hexdigest())
                rows["pixels"].append(arr.tobytes())
            writer.write_table(pa.table(rows, schema=schema))
    return len(paths) / (time.perf_counter() - start)


def spark_session():
    from dlspark.config import SparkConfig
    from dlspark.spark.session import build_spark_session

    return build_spark_session(SparkConfig(master=f"local[{CORES}]", driver_memory="8g", ui_enabled=False))


def run_ours(work: Path, pipeline: str, sets: list[str]) -> tuple[float, dict, int]:
    """Wall seconds, run summary and peak RSS of one full ingest into a fresh output folder."""
    from dlspark.config import load_config

    shutil.rmtree(work / "tables", ignore_errors=True)
    cfg = load_config(overrides=[f"paths.data_dir={work}", *sets])
    spark = spark_session()
    module = __import__(f"pipelines.{pipeline}", fromlist=[pipeline])
    with PeakRss() as rss:
        start = time.perf_counter()
        report = getattr(module, pipeline)(spark, cfg, "bench")
        wall = time.perf_counter() - start
    return wall, report.summary, rss.peak


def bench_images(args: argparse.Namespace) -> dict:
    work = Path(args.workdir) / "images"
    paths = make_images(work / "landing", args.files, args.size)
    for p in paths:  # warm the page cache so both sides read from memory
        p.read_bytes()
    sample = paths[: min(len(paths), args.bare_sample)]
    with PeakRss() as bare_rss:
        bare = bare_images(sample, args.target)
    written = bare_images_written(sample, args.target, work / "bare_written")
    sets = ["ingest_images.input=landing", f"ingest_images.size=[{args.target},{args.target}]", "ingest_images.resize=stretch"]
    wall, summary, rss = run_ours(work, "ingest_images", sets)
    assert summary["counts"]["written"] == len(paths), summary["counts"]
    result = _result("images", "images/s", len(paths), bare, len(sample), bare_rss.peak, wall, summary, rss, 0.85,
                     f"{args.files} JPEGs {args.size}x{args.size} -> {args.target}x{args.target} RGB")
    result["bare_written_rate"] = round(written, 1)
    result["bare_written_ratio"] = round(written / bare, 3)
    return result


def make_text(path: Path, rows: int) -> None:
    """A CSV of `rows` labelled tweets, replicated from the real corpus with a suffix so texts stay distinct."""
    import pandas as pd

    from dlspark.datasets.tweets import tweets_csv_path

    base = pd.read_csv(tweets_csv_path(), encoding="utf-8", encoding_errors="replace", engine="python")[["sentiment", "text"]]
    base = base.dropna()
    reps = -(-rows // len(base))
    df = pd.concat([base] * reps, ignore_index=True).iloc[:rows]
    # One physical line per row (a few tweets hold \r or \n), so pandas' C parser reads it in the baseline.
    df["text"] = df["text"].astype(str).str.replace(r"[\r\n]+", " ", regex=True) + " #" + df.index.astype(str)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


def bare_text(path: Path, max_length: int) -> tuple[float, int]:
    """Rows/s of read CSV + normalise + the usual transformers fast-tokenizer call per 512 texts, in this process."""
    import pandas as pd
    from transformers import AutoTokenizer

    from dlspark.text.normalize import NormalizeSpec, normalize_text
    from dlspark.text.tokenize import tokenizer_dir

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: the baseline is one core, scaled by CORES
    tok, spec = AutoTokenizer.from_pretrained(str(tokenizer_dir("minilm")), local_files_only=True), NormalizeSpec()
    start = time.perf_counter()
    texts = pd.read_csv(path, encoding="utf-8", encoding_errors="replace")["text"].fillna("").tolist()
    norm = [normalize_text(t, spec) for t in texts]
    for i in range(0, len(norm), 512):
        enc = tok(norm[i:i + 512], truncation=True, max_length=max_length, padding="max_length")
        np.asarray(enc["input_ids"], dtype=np.int32), np.asarray(enc["attention_mask"], dtype=np.int8)
    return len(texts) / (time.perf_counter() - start), len(texts)


def bench_text(args: argparse.Namespace) -> dict:
    work = Path(args.workdir) / f"text-{args.rows}"
    csv = work / "landing" / "tweets.csv"
    if not csv.exists():
        make_text(csv, args.rows)
    with PeakRss() as bare_rss:
        bare, n = bare_text(csv, 64)
    sets = ["ingest_text.input=landing", "ingest_text.label_column=sentiment",
            "ingest_text.labels=[negative,neutral,positive]", "ingest_text.max_length=64"]
    wall, summary, rss = run_ours(work, "ingest_text", sets)
    return _result("text", "rows/s", summary["counts"]["seen"], bare, n, bare_rss.peak, wall, summary, rss, 0.85,
                   f"{args.rows} tweet rows (real corpus replicated, distinct texts), max_length 64")


def _result(name, unit, n, bare, bare_n, bare_rss, wall, summary, rss, target, data) -> dict:  # noqa: ANN001
    ours = n / wall
    return {
        "benchmark": name, "unit": unit, "data": data, "items": n, "bare_rate": round(bare, 1), "bare_items": bare_n,
        "bare_scaled": round(bare * CORES, 1), "ours_rate": round(ours, 1), "ratio": round(ours / (bare * CORES), 3),
        "target": target, "ours_wall_s": round(wall, 1), "stage_s": summary["timings_s"], "counts": summary["counts"],
        "peak_rss_mib": {"bare": round(bare_rss / 2**20), "ours": round(rss / 2**20)},
        "machine": _machine(), "command": " ".join(["bench/ingest_bench.py", *sys.argv[1:]]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    import PIL
    import pyarrow
    import pyspark
    import transformers

    return {"cpu": cpu, "nproc": os.cpu_count(), "spark_cores": CORES, "python": platform.python_version(),
            "pyspark": pyspark.__version__, "pyarrow": pyarrow.__version__, "pillow": PIL.__version__,
            "transformers": transformers.__version__}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["images", "text", "report"])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--target", type=int, default=224)
    parser.add_argument("--bare-sample", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--workdir", default="/tmp/dlspark-bench")
    parser.add_argument("--name", help="results file name (bench/results/NAME.json); default: images or text")
    args = parser.parse_args()
    if args.what != "report":
        result = bench_images(args) if args.what == "images" else bench_text(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.name or args.what}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    from bench.report import write_benchmarks_md

    write_benchmarks_md(RESULTS, REPO / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
