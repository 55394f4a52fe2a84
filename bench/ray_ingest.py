"""Ray Data contenders of the image ingest benchmark; run by bench/ingest_bench.py under Ray's own venv.

    .venv-ray/bin/python bench/ray_ingest.py images LANDING OUT --items N --target 224 --cores 2
    .venv-ray/bin/python bench/ray_ingest.py text CSV OUT --items N --tokenizer DIR --cores 2

Ray Data needs pyarrow >= 17, which petastorm's classic stack cannot have, so it lives in its own venv
(``bench/setup_ray_venv.sh``). Prints one JSON object: items/s of each variant doing the same work as ours
(images: decode + resize to target x target RGB [+ sha256 of the file] -> Parquet; text: our normalisation,
sha256 and the same Rust tokenizer at max_length 64 -> Parquet), Ray started beforehand (as our Spark session
is), ``num_cpus=cores``. The text variant imports dlspark's pure text modules from lib/ (no Spark needed).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def decode_batch(batch: dict, target: int) -> dict:
    """read_binary_files rows -> path, sha256, pixels (uint8 HxWx3 bytes), as ours stores them."""
    from PIL import Image

    out: dict[str, list] = {"path": [], "sha256": [], "pixels": []}
    for path, data in zip(batch["path"], batch["bytes"]):
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (target, target))
        arr = np.asarray(img.convert("RGB").resize((target, target), Image.Resampling.BILINEAR))
        out["path"].append(path)
        out["sha256"].append(hashlib.sha256(data).hexdigest())
        out["pixels"].append(arr.tobytes())
    return {k: np.array(v, dtype=object) for k, v in out.items()}


def tokenize_batch_fn(batch: dict, tokenizer: str) -> dict:
    """read_csv rows -> text_norm, sha256, input_ids, attention_mask (fixed length 64), as ours computes them."""
    from dlspark.text.normalize import NormalizeSpec, normalize_text
    from dlspark.text.tokenize import load_tokenizer, tokenize_batch

    spec = NormalizeSpec()
    norm = [normalize_text("" if t is None else str(t), spec) for t in batch["text"]]
    enc = tokenize_batch(load_tokenizer(tokenizer), norm, 64)
    return {"text_norm": np.array(norm, dtype=object), "sha256": np.array([hashlib.sha256(t.encode()).hexdigest() for t in norm]),
            "input_ids": enc.input_ids, "attention_mask": enc.attention_mask}


def _timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["images", "text"])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--target", type=int, default=224)
    parser.add_argument("--tokenizer", help="text: the tokenizer folder (tokenizer.json)")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per Ray task, as one per Spark task

    import ray

    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "lib"),
                                       "TOKENIZERS_PARALLELISM": "false"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    size = (args.target, args.target)
    pipelines = {
        "read_images": lambda out: ray.data.read_images(args.source, size=size, mode="RGB", include_paths=True)
        .write_parquet(out),
        "binary_map_batches": lambda out: ray.data.read_binary_files(args.source, include_paths=True)
        .map_batches(decode_batch, fn_kwargs={"target": args.target}, batch_size=256).write_parquet(out),
    } if args.kind == "images" else {
        "map_batches": lambda out: ray.data.read_csv(args.source)
        .map_batches(tokenize_batch_fn, fn_kwargs={"tokenizer": args.tokenizer}, batch_size=4096).write_parquet(out),
    }
    results = {}
    for name, run in pipelines.items():
        out = f"{args.out}/{name}"
        shutil.rmtree(out, ignore_errors=True)
        seconds = _timed(lambda: run(out))  # noqa: B023 - called at once
        rows = ray.data.read_parquet(out).count()
        assert rows == args.items, (name, rows)
        results[name] = {"rate": round(args.items / seconds, 1), "wall_s": round(seconds, 1)}
    print(json.dumps({"ray": ray.__version__, "results": results}))


if __name__ == "__main__":
    main()
