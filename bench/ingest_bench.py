"""Ingest throughput against the tools a user would pick instead, and how its cost grows, measured in one run.

    bench/setup_ray_venv.sh                                           # Ray Data in its own venv (.venv-ray)
    .venv/bin/python bench/ingest_bench.py images --files 20000      # 256x256 JPEGs -> 224x224 RGB, 5 contenders
    .venv/bin/python bench/ingest_bench.py text --rows 1000000 --name text-1m   # tweets CSV, 4 contenders
    .venv/bin/python bench/ingest_bench.py growth-images --target 96  # ours at 20k, 100k, 200k files
    .venv/bin/python bench/ingest_bench.py growth-text               # ours at 1M and 5M rows
    .venv/bin/python bench/ingest_bench.py report                    # rewrite BENCHMARKS.md from bench/results/

Images, on the same files, page cache warm, 2 cores each: (a) a bare single-process Pillow loop times the
cores; (b) the no-Spark ceiling on all cores (multiprocessing: decode + resize + sha256 + Parquet write);
(c) Spark's image source + a resize pandas UDF + Parquet write; (d) Ray Data ``read_images`` and
``read_binary_files`` + ``map_batches`` (bench/ray_ingest.py, under Ray's venv); (e) ours, the full pipeline
(listing, ledger, decode, dedup, Parquet write, quarantine, commit, summary) on local[CORES], in a fresh JVM;
session start-up is excluded for Spark and Ray alike. Text: (a), (b) (CSV byte ranges, our normalisation and
tokenizer, Parquet), (d) Ray Data ``read_csv`` + ``map_batches``, (e). Peak RSS is sampled every 0.2 s over
the process tree, and separately for the Python driver and the JVM.
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
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CORES = 2
log = logging.getLogger("bench")


class PeakRss:
    """Context manager sampling the RSS of this process and all its descendants."""

    def __enter__(self) -> "PeakRss":
        self.peak, self.peak_driver, self.peak_jvm, self._stop = 0, 0, 0, threading.Event()
        self.driver_at_start = psutil.Process().memory_info().rss  # the harness's own lists of paths etc.
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
                    rss = p.memory_info().rss
                    if p.pid == me.pid:
                        self.peak_driver = max(self.peak_driver, rss)
                    elif p.name() == "java":
                        self.peak_jvm = max(self.peak_jvm, rss)
                    total += rss
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


def _write_shard(args: tuple[list[Path], int, Path]) -> int:
    """Decode + resize + sha256 + Parquet write of one shard, in one process (see ceiling_images)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from dlspark.tables.staged import writer_options

    paths, target, out = args
    schema = pa.schema([("path", pa.string()), ("sha256", pa.string()), ("pixels", pa.binary())])
    with pq.ParquetWriter(out, schema, **writer_options(schema, ["pixels"])) as writer:
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
    return len(paths)


def ceiling_images(paths: list[Path], target: int, out: Path, cores: int) -> float:
    """Images/s of the no-Spark ceiling on all cores: ``cores`` processes, each the bare loop plus what any
    ingest must add per image (sha256 of the file for dedup, a Parquet write of the pixels as plain blobs,
    512 rows per row group) over its share of the files; pool start-up included."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shards = [(paths[i::cores], target, out / f"part-{i}.parquet") for i in range(cores)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(cores) as pool:
        done = sum(pool.map(_write_shard, shards))
    assert done == len(paths)
    return len(paths) / (time.perf_counter() - start)


def _resize_bgr(data: "pd.Series", height: "pd.Series", width: "pd.Series", channels: "pd.Series", *,
                target: int) -> "pd.Series":
    """Spark image-source rows (BGR(A) or gray bytes, row-major) -> target x target RGB uint8 bytes."""
    from PIL import Image

    def one(buf: bytes, h: int, w: int, c: int) -> bytes:
        arr = np.frombuffer(buf, np.uint8).reshape(h, w, c)
        rgb = arr[..., 2::-1] if c >= 3 else np.repeat(arr, 3, axis=2)
        img = Image.fromarray(np.ascontiguousarray(rgb)).resize((target, target), Image.Resampling.BILINEAR)
        return np.asarray(img).tobytes()
    return pd.Series([one(b, h, w, c) for b, h, w, c in zip(data, height, width, channels)])


def spark_image_source(root: Path, target: int, out: Path) -> float:
    """Images/s of Spark's built-in image source (``spark.read.format("image")``, Java ImageIO decode) + a
    pandas UDF that resizes to target x target RGB + Spark's Parquet write; same session settings as ours."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    def resize_rows(data: pd.Series, height: pd.Series, width: pd.Series, channels: pd.Series) -> pd.Series:
        return _resize_bgr(data, height, width, channels, target=target)

    spark = spark_session()
    resize = pandas_udf(resize_rows, "binary")  # type: ignore[call-overload]
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    df = spark.read.format("image").option("recursiveFileLookup", "true").load(str(root))
    img = F.col("image")
    df.select(img.origin.alias("path"), resize(img.data, img.height, img.width, img.nChannels).alias("pixels")) \
        .write.parquet(str(out))
    seconds = time.perf_counter() - start
    written = spark.read.parquet(str(out)).count()
    assert written == sum(1 for _ in root.rglob("*.jpg")), written
    return written / seconds


def ray_data(root: Path, out: Path, files: int, target: int, python: str) -> dict:
    """Images/s of the two Ray Data pipelines (bench/ray_ingest.py), run under Ray's own venv."""
    return _run_ray(python, ["images", str(root), str(out), "--items", str(files), "--target", str(target)])


def ray_data_text(csv: Path, out: Path, rows: int, tokenizer: str, python: str) -> dict:
    """Rows/s of Ray Data ``read_csv`` + ``map_batches`` (normalise, hash, tokenize) -> ``write_parquet``."""
    return _run_ray(python, ["text", str(csv), str(out), "--items", str(rows), "--tokenizer", tokenizer])


def _run_ray(python: str, args: list[str]) -> dict:
    import subprocess

    if not Path(python).exists():
        raise SystemExit(f"{python} not found: run bench/setup_ray_venv.sh first (or pass --ray-python)")
    cmd = [python, str(REPO / "bench" / "ray_ingest.py"), *args, "--cores", str(CORES)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"Ray contender failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spark_session():
    from dlspark.config import SparkConfig
    from dlspark.spark.session import build_spark_session

    return build_spark_session(SparkConfig(master=f"local[{CORES}]", driver_memory="8g", ui_enabled=False))


def run_ours(work: Path, pipeline: str, sets: list[str]) -> tuple[float, dict, PeakRss]:
    """Wall seconds, run summary and peak RSS (tree, Python driver, JVM) of one full ingest into a fresh output folder."""
    from dlspark.config import load_config

    shutil.rmtree(work / "tables", ignore_errors=True)
    cfg = load_config(overrides=[f"paths.data_dir={work}", *sets])
    spark = spark_session()
    module = __import__(f"pipelines.{pipeline}", fromlist=[pipeline])
    with PeakRss() as rss:
        start = time.perf_counter()
        report = getattr(module, pipeline)(spark, cfg, "bench")
        wall = time.perf_counter() - start
    return wall, report.summary, rss


def linked_images(work: Path, pool: Path, n: int, size: int) -> list[Path]:
    """The first ``n`` images of a shared pool (generated once) hard-linked into ``work/landing``."""
    source = make_images(pool, n, size)
    paths = [work / "landing" / p.relative_to(pool) for p in source]
    for d in {p.parent for p in paths}:
        d.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(source, paths):
        if not dst.exists():
            os.link(src, dst)
    return paths


def bench_images(args: argparse.Namespace) -> dict:
    """The five contenders on the same files, back to back: (a) bare loop x cores, (b) no-Spark ceiling on all
    cores, (c) Spark's image source, (d) Ray Data (two pipelines), (e) ours. ``--only-ours``: (a) and (e)."""
    work = Path(args.workdir) / f"images-{args.files}-{args.target}"
    landing = work / "landing"
    paths = linked_images(work, Path(args.workdir) / f"image-pool-{args.size}", args.files, args.size)
    for p in paths:  # warm the page cache so every contender reads from memory
        p.read_bytes()
    sample = paths[: min(len(paths), args.bare_sample)]
    with PeakRss() as bare_rss:
        bare = bare_images(sample, args.target)
    rates = {"bare_x_cores": bare * CORES}
    if not args.only_ours:
        rates["ceiling"] = ceiling_images(paths, args.target, work / "ceiling", CORES)
    # Ours first in this process: a fresh JVM, as a spark-submit run has (the image-source contender after
    # it then gets the warm JVM: if anything, the comparison favours it).
    sets = ["ingest_images.input=landing", f"ingest_images.size=[{args.target},{args.target}]", "ingest_images.resize=stretch"]
    wall, summary, rss = run_ours(work, "ingest_images", sets)
    assert summary["counts"]["written"] == len(paths), summary["counts"]
    if not args.only_ours and not args.skip_contenders:
        rates["spark_image_source"] = spark_image_source(landing, args.target, work / "spark_image")
        ray = ray_data(landing, work / "ray", len(paths), args.target, args.ray_python)
        rates.update({f"ray_{name}": r["rate"] for name, r in ray["results"].items()})
    result = _result("images", "images/s", len(paths), bare, len(sample), bare_rss.peak, wall, summary, rss, 0.85,
                     f"{args.files} JPEGs {args.size}x{args.size} -> {args.target}x{args.target} RGB")
    rates["ours"] = result["ours_rate"]
    result["contenders"] = {name: round(rate, 1) for name, rate in rates.items()}
    result["ratios"] = _image_ratios(rates)
    if not args.only_ours and not args.skip_contenders:
        result["ray_version"] = ray["ray"]
    return result


def _image_ratios(rates: dict[str, float]) -> dict[str, float]:
    others = [rates[k] for k in rates if k.startswith(("spark_image", "ray_"))]
    out = {"ours_over_bare_x_cores": rates["ours"] / rates["bare_x_cores"]}
    if "ceiling" in rates:
        out |= {"ours_over_ceiling": rates["ours"] / rates["ceiling"],
                "ceiling_over_bare_x_cores": rates["ceiling"] / rates["bare_x_cores"]}
    if others:
        out["ours_over_best_other_tool"] = rates["ours"] / max(others)
    return {k: round(v, 3) for k, v in out.items()}


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


def _text_shard(args: tuple[Path, int, int, int, str, Path]) -> int:
    """Read one byte range of the CSV (whole lines), normalise, hash, tokenize, write Parquet (see ceiling_text)."""
    import hashlib

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlspark.text.normalize import NormalizeSpec, normalize_text
    from dlspark.text.tokenize import load_tokenizer, tokenize_batch

    path, start, end, max_length, tokenizer, out = args
    with open(path, "rb") as handle:
        header = handle.readline()
        handle.seek(start)
        chunk = handle.read(end - start)
    texts = pd.read_csv(io.BytesIO(header + chunk), encoding="utf-8", encoding_errors="replace")["text"].fillna("").tolist()
    tok, spec = load_tokenizer(tokenizer), NormalizeSpec()
    with pq.ParquetWriter(out, _TEXT_SCHEMA) as writer:
        for i in range(0, len(texts), 4096):
            norm = [normalize_text(t, spec) for t in texts[i:i + 4096]]
            enc = tokenize_batch(tok, norm, max_length)
            writer.write_table(pa.table({
                "text_norm": norm, "sha256": [hashlib.sha256(t.encode()).hexdigest() for t in norm],
                "input_ids": _lists(enc.input_ids, pa.int32()), "attention_mask": _lists(enc.attention_mask, pa.int8()),
            }, schema=_TEXT_SCHEMA))
    return len(texts)


def _lists(matrix: np.ndarray, dtype: "object") -> "object":
    import pyarrow as pa

    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=dtype))


def _text_schema() -> "object":
    import pyarrow as pa

    return pa.schema([("text_norm", pa.string()), ("sha256", pa.string()), ("input_ids", pa.list_(pa.int32())),
                      ("attention_mask", pa.list_(pa.int8()))])


_TEXT_SCHEMA = _text_schema()


def ceiling_text(csv: Path, max_length: int, out: Path, cores: int) -> tuple[float, int]:
    """Rows/s of the no-Spark text ceiling on all cores: ``cores`` processes, each reading its byte range of the
    CSV (one physical line per row, as make_text writes it), normalising, hashing, tokenizing (the same Rust
    tokenizer as ours) and writing Parquet; pool start-up included."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    size = csv.stat().st_size
    with open(csv, "rb") as handle:
        bounds = [len(handle.readline())]
        for k in range(1, cores):
            handle.seek(max(bounds[-1], size * k // cores))
            handle.readline()
            bounds.append(handle.tell())
    bounds.append(size)
    shards = [(csv, bounds[k], bounds[k + 1], max_length, "minilm", out / f"part-{k}.parquet") for k in range(cores)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(cores) as pool:
        rows = sum(pool.map(_text_shard, shards))
    return rows / (time.perf_counter() - start), rows


def bench_text(args: argparse.Namespace) -> dict:
    work = Path(args.workdir) / f"text-{args.rows}"
    csv = work / "landing" / "tweets.csv"
    if not csv.exists():
        make_text(csv, args.rows)
    if args.only_ours:  # cost growth: the bare loop would take longer than the run it is compared with
        bare, n, bare_rss = float("nan"), 0, None
    else:
        with PeakRss() as bare_rss:
            bare, n = bare_text(csv, 64)
    rates = {"bare_x_cores": bare * CORES}
    if not args.only_ours:
        rates["ceiling"], rows = ceiling_text(csv, 64, work / "ceiling", CORES)
        assert rows == n, (rows, n)
    if not args.only_ours and not args.skip_contenders:
        from dlspark.text.tokenize import tokenizer_dir

        ray = ray_data_text(csv, work / "ray", n, str(tokenizer_dir("minilm")), args.ray_python)
        rates.update({f"ray_{name}": r["rate"] for name, r in ray["results"].items()})
    sets = ["ingest_text.input=landing", "ingest_text.label_column=sentiment",
            "ingest_text.labels=[negative,neutral,positive]", "ingest_text.max_length=64"]
    wall, summary, rss = run_ours(work, "ingest_text", sets)
    if args.only_ours:
        rates = {}
    result = _result("text", "rows/s", summary["counts"]["seen"], bare, n, bare_rss.peak if bare_rss else 0, wall, summary, rss, 0.85,
                     f"{args.rows} tweet rows (real corpus replicated, distinct texts), max_length 64")
    if rates:
        rates["ours"] = result["ours_rate"]
        result["contenders"] = {name: round(rate, 1) for name, rate in rates.items()}
        result["ratios"] = _image_ratios(rates)
    if "ray_map_batches" in rates:
        result["ray_version"] = ray["ray"]
    return result


def bench_growth(args: argparse.Namespace) -> dict:
    """Seconds per 1k items and peak RSS of ours at each size, each size in a fresh process (cold JVM, its own
    driver); a PNG of the curve beside the results."""
    kind = args.what.removeprefix("growth-")
    sizes = [int(x) for x in (args.sizes or ("20000,100000,200000" if kind == "images" else "1000000,5000000")).split(",")]
    points = []
    for n in sizes:
        size_arg = ["--files", str(n), "--size", str(args.size), "--target", str(args.target), "--only-ours"] \
            if kind == "images" else ["--rows", str(n), "--only-ours"]
        name = f"growth/{kind}-{n}"
        cmd = [sys.executable, str(Path(__file__).resolve()), kind, *size_arg, "--workdir", args.workdir, "--name", name,
               "--no-report"]
        log.info("growth: %s", " ".join(cmd))
        import subprocess

        subprocess.run(cmd, check=True)
        r = json.loads((RESULTS / f"{name}.json").read_text())
        points.append({"items": r["items"], "wall_s": r["ours_wall_s"], "s_per_1k": round(1000 * r["ours_wall_s"] / r["items"], 3),
                       "process_s_per_1k": round(1000 * r["stage_s"]["process"] / r["items"], 3), "fixed_s": r["fixed_s"],
                       "stage_s": r["stage_s"], "peak_rss_mib": r["peak_rss_mib"], "bare_rate": r["bare_rate"]})
    first, last = points[0], points[-1]
    result = {"benchmark": f"growth-{kind}", "unit": "images" if kind == "images" else "rows", "points": points,
              "s_per_1k_last_over_first": round(last["s_per_1k"] / first["s_per_1k"], 3),
              "driver_rss_last_over_first": round(last["peak_rss_mib"]["ours_python_driver"]
                                                  / first["peak_rss_mib"]["ours_python_driver"], 3),
              "driver_growth_mib": [p["peak_rss_mib"].get("ours_python_driver_growth") for p in points],
              "data": (f"JPEGs {args.size}x{args.size} -> {args.target}x{args.target} RGB" if kind == "images"
                       else "tweet rows (real corpus replicated, distinct texts), max_length 64"),
              "machine": _machine(), "command": " ".join(["bench/ingest_bench.py", *sys.argv[1:]]),
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _plot_growth(result, RESULTS / f"growth-{kind}.png")
    return result


def _plot_growth(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [p["items"] for p in pts]
    ax.plot(x, [p["s_per_1k"] for p in pts], "o-", label="seconds per 1k (whole run)")
    ax.plot(x, [p["process_s_per_1k"] for p in pts], "s--", label="seconds per 1k (process stage)")
    ax.set_xscale("log")
    ax.set_xlabel(f"{result['unit']} ingested")
    ax.set_ylabel("seconds per 1k")
    ax.set_ylim(bottom=0)
    rss = ax.twinx()
    rss.plot(x, [p["peak_rss_mib"].get("ours_python_driver_growth", 0) for p in pts], "^:", color="gray",
             label="driver RSS growth in run (MiB)")
    rss.set_ylabel("Python driver RSS growth during the ingest, MiB")
    rss.set_ylim(bottom=0)
    ax.legend(loc="lower left", fontsize=8)
    rss.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Ingest cost growth: {result['benchmark']}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _result(name, unit, n, bare, bare_n, bare_rss, wall, summary, rss, target, data) -> dict:  # noqa: ANN001
    ours = n / wall
    measured = bare == bare  # NaN: the bare loop was not run (cost growth of text)
    return {
        "benchmark": name, "unit": unit, "data": data, "items": n, "bare_rate": round(bare, 1) if measured else None,
        "bare_items": bare_n, "bare_scaled": round(bare * CORES, 1) if measured else None, "ours_rate": round(ours, 1),
        "ratio": round(ours / (bare * CORES), 3) if measured else None,
        "target": target, "ours_wall_s": round(wall, 1), "stage_s": summary["timings_s"], "counts": summary["counts"],
        "worker_s": summary.get("worker_s", {}), "fixed_s": _fixed_seconds(wall, summary["timings_s"]),
        "peak_rss_mib": {"bare": round(bare_rss / 2**20) if bare_rss else None, "ours": round(rss.peak / 2**20),
                         "ours_python_driver": round(rss.peak_driver / 2**20), "ours_jvm": round(rss.peak_jvm / 2**20),
                         "ours_python_driver_growth": round((rss.peak_driver - rss.driver_at_start) / 2**20)},
        "machine": _machine(), "command": " ".join(["bench/ingest_bench.py", *sys.argv[1:]]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _fixed_seconds(wall: float, stages: dict[str, float]) -> float:
    """The run's cost that does not scale with the work per item: everything but the workers' process stage
    (listing, first job, dedup, commit, quarantine, ledger, summary)."""
    return round(wall - stages.get("process", 0.0), 1)


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
    parser.add_argument("what", choices=["images", "text", "growth-images", "growth-text", "report"])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--target", type=int, default=224)
    parser.add_argument("--bare-sample", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--workdir", default="/tmp/dlspark-bench")
    parser.add_argument("--name", help="results file name (bench/results/NAME.json); default: images or text")
    parser.add_argument("--skip-contenders", action="store_true", help="images: only the bare loop, the ceiling and ours")
    parser.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md")
    parser.add_argument("--only-ours", action="store_true", help="images: only the bare loop and ours (cost growth)")
    parser.add_argument("--sizes", help="growth: comma-separated sizes (files for images, rows for text)")
    parser.add_argument("--ray-python", default=str(REPO / ".venv-ray" / "bin" / "python"),
                        help="the Ray venv's python (bench/setup_ray_venv.sh)")
    args = parser.parse_args()
    if args.what.startswith("growth-"):
        result = bench_growth(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.what}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    elif args.what != "report":
        result = bench_images(args) if args.what == "images" else bench_text(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{args.name or args.what}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    if args.no_report:
        return 0
    from bench.report import write_benchmarks_md

    write_benchmarks_md(RESULTS, REPO / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
