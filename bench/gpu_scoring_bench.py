"""Per-partition scoring function vs bare PyTorch on one GPU (no Spark: the GPU machine has none).

    python bench/gpu_scoring_bench.py --images 20480 --texts 20480        # on a GPU machine
    python bench/gpu_scoring_bench.py --device cpu --images 64 --texts 64 --image-size 64   # smoke test anywhere

Images: ResNet-50 (random weights, 1000 classes), uint8 224x224x3. Ours = ``score_record_batch`` over Arrow
record batches of uint8 ``pixels`` (exactly what ``mapInArrow`` hands a task): per-row validation, zero-copy
uint8 view, transfer, on-device normalisation, bf16 autocast, softmax, top-k and Arrow output columns. Bare =
the same model on uint8 tensors already in pinned host memory: transfer, normalise, bf16 forward, softmax,
argmax. Text: the MiniLM sentiment classifier, seq 128 (all tokens attended, so dynamic padding cannot help),
ours over Arrow ``input_ids``/``attention_mask`` list columns vs bare on int64 tensors. Both sides time a
warm-up-free steady state (two warm-up batches excluded) and synchronise the device before stopping the clock.
Writes bench/results/gpu_scoring.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from dlspark.inference.predictors import TorchPredictor
from dlspark.inference.scoring import ScoringSpec, score_record_batch
from dlspark.models import build_model
from dlspark.models.servable import servable

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "gpu_scoring.json"


def timed(run: Callable[[int], None], batches: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds for ``batches`` calls of ``run(i)`` after ``warmup`` untimed calls."""
    for i in range(warmup):
        run(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(batches):
        run(i)
    _sync(device)
    return time.perf_counter() - start


def image_bench(n: int, batch: int, size: int, device: torch.device) -> dict:
    model = build_model({"name": "resnet", "variant": "resnet50", "in_channels": 3, "num_classes": 1000}).eval()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    record = pa.RecordBatch.from_pydict({"id": [str(i) for i in range(batch)],
                                         "pixels": pa.array([p.tobytes() for p in pixels], pa.binary())})
    labels = tuple(f"c{i}" for i in range(1000))
    pre = {"kind": "image", "image_shape": [size, size, 3], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    spec = ScoringSpec(cache_key="bench", flavor="pytorch", labels=labels, preprocessing=pre, model_dir="-",
                       passthrough=("id",), batch_size=batch, top_k=5)
    predictor = TorchPredictor(model, device=str(device))
    if device.type == "cuda":
        predictor.model = predictor.model.to(memory_format=torch.channels_last)
    host = torch.from_numpy(pixels).pin_memory() if device.type == "cuda" else torch.from_numpy(pixels)
    mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1)

    def bare(_: int) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x = host.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            torch.softmax(predictor.model(x).float(), dim=1).argmax(dim=1).cpu()

    steps = max(1, n // batch)
    bare_s = timed(bare, steps, device)
    ours_s = timed(lambda _: score_record_batch(record, spec, predictor), steps, device)
    return _result("resnet50 bf16 uint8 %dx%dx3" % (size, size), steps * batch, batch, bare_s, ours_s)


def text_bench(n: int, batch: int, length: int, device: torch.device) -> dict:
    model = servable(build_model({"name": "minilm", "encoder": "minilm", "num_classes": 2}).eval(), "text")
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (batch, length), dtype=np.int64)
    mask = np.ones((batch, length), np.int64)
    record = pa.RecordBatch.from_pydict({"id": [str(i) for i in range(batch)],
                                         "input_ids": pa.array(list(ids.astype(np.int32)), pa.list_(pa.int32())),
                                         "attention_mask": pa.array(list(mask.astype(np.int8)), pa.list_(pa.int8()))})
    pre = {"kind": "text", "max_length": length}
    spec = ScoringSpec(cache_key="bench-text", flavor="pytorch", labels=("negative", "positive"), preprocessing=pre,
                       model_dir="-", passthrough=("id",), batch_size=batch, top_k=2)
    predictor = TorchPredictor(model, device=str(device))
    stacked = torch.from_numpy(np.stack([ids, mask], axis=1))
    stacked = stacked.pin_memory() if device.type == "cuda" else stacked

    def bare(_: int) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            torch.softmax(predictor.model(stacked.to(device, non_blocking=True)).float(), dim=1).argmax(dim=1).cpu()

    steps = max(1, n // batch)
    bare_s = timed(bare, steps, device)
    ours_s = timed(lambda _: score_record_batch(record, spec, predictor), steps, device)
    return _result(f"minilm sentiment bf16 seq{length}", steps * batch, batch, bare_s, ours_s)


def _result(model: str, rows: int, batch: int, bare_s: float, ours_s: float) -> dict:
    return {"model": model, "rows": rows, "batch": batch, "bare_rows_per_s": rows / bare_s,
            "ours_rows_per_s": rows / ours_s, "ratio": bare_s / ours_s}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20480)
    parser.add_argument("--texts", type=int, default=20480)
    parser.add_argument("--image-batch", type=int, default=256)
    parser.add_argument("--text-batch", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-length", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    results = [image_bench(args.images, args.image_batch, args.image_size, device),
               text_bench(args.texts, args.text_batch, args.text_length, device)]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")
    payload = {"benchmark": "gpu_scoring", "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": f"python bench/gpu_scoring_bench.py {flags}",
               "machine": {"gpu": gpu, "torch": torch.__version__, "python": platform.python_version()}, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    for r in results:
        print(f"{r['model']}: bare {r['bare_rows_per_s']:.0f}/s, ours {r['ours_rows_per_s']:.0f}/s, ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
