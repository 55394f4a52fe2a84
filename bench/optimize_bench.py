"""Export and optimisation variants of the two demo models: size, CPU latency and throughput, accuracy.

    .venv/bin/python bench/optimize_bench.py                          # both models, every labelled test row
    .venv/bin/python bench/optimize_bench.py --text-rows 300 --latency-rows 20   # smoke

Models: the registered champions ``models:/dlspark-fashion-mnist@champion`` (CNN, 28x28x1) and
``models:/dlspark-sentiment@champion`` (MiniLM, 64 tokens), pinned to their versions. Rows: the test split of
the ingested tables (``data/tables/images``, ``data/tables/text``) prepared exactly as inference prepares them
(``dlspark.export.parity.read_split``: the model's ``extras/preprocessing.json``); rows whose label is not a class
of the model (neutral tweets: the sentiment model is trained without them) are left out.

Variants, all built here from the eager module (``load_torch_module``): float torch; TorchScript (traced);
ONNX fp32 (onnxruntime CPU); ONNX int8 (onnxruntime ``quantize_dynamic``, QInt8 weights on MatMul/Gemm); ONNX static
int8 (``quantize_static``, QDQ, convolutions too, activation ranges from the first 512 train rows);
torch int8 (``quantize_dynamic`` on nn.Linear; convolutions stay float); L1-pruned (global unstructured, 50% of
Linear/Conv weights, float). One process, ``torch.set_num_threads(2)`` and onnxruntime intra-op threads 2.

- size: bytes of the file each variant is stored as (torch: ``state_dict`` via ``torch.save``; TorchScript:
  ``torch.jit.save``; ONNX: the .onnx file), and the same gzip-compressed (level 6): pruning zeros weights but
  keeps them stored densely, so only the compressed size shows it.
- latency: p50 of single-row calls (batch 1) over the first ``--latency-rows`` rows (text cut to each row's length).
- throughput and accuracy: one pass over every row in batches of 256 images / 64 texts (texts sorted by length,
  each batch cut to its longest row, as ``dlspark.inference`` scores them), after one warm-up batch.
- agreement: fraction of rows whose class equals the float torch model's; max |logit diff| against it.

Results: ``bench/results/optimize.json``; ``bench/report.py`` renders them into BENCHMARKS.md.
"""
import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
THREADS = 2
PRUNE_AMOUNT = 0.5
MODELS = {"image": ("models:/dlspark-fashion-mnist@champion", "tables/images", 256),
          "text": ("models:/dlspark-sentiment@champion", "tables/text", 64)}
DESIGN = {
    "size": "bytes of the stored file (torch: state_dict via torch.save; TorchScript: torch.jit.save; ONNX: the .onnx "
            "file) and gzip level 6 of it; pruned weights are zeros stored densely, so only gzip shows pruning",
    "latency": "p50 of single-row calls (batch 1; text cut to the row's length) after one warm-up call",
    "throughput": "one pass over every row in batches (texts sorted by length, each batch cut to its longest row, "
                  "as dlspark.inference scores them), after one warm-up batch; this pass also gives accuracy",
    "agreement": "fraction of rows whose class equals the float torch model's; max |logit diff| against it",
}
log = logging.getLogger("optimize_bench")


def variants(module: Any, example: np.ndarray, workdir: Path, calibration: np.ndarray) -> dict[str, tuple[Callable, Path, dict]]:
    """``{name: (inputs -> logits, stored file, extra facts)}`` for every variant of ``module`` (``calibration``: train
    rows that set the static int8 variant's activation ranges)."""
    from dlspark.export.onnx import export_onnx, onnx_runner
    from dlspark.export.optimize import (
        prune_l1,
        quantize_onnx_int8,
        quantize_onnx_static,
        quantize_torch_int8,
        save_torch,
        sparsity,
    )
    from dlspark.export.registered import torch_logits
    from dlspark.export.torchscript import export_torchscript, torchscript_runner

    onnx_fp32 = export_onnx(module, example, workdir / "model.onnx")
    int8 = quantize_torch_int8(module)
    pruned = prune_l1(module, PRUNE_AMOUNT)
    static = {}
    if example.ndim == 4:   # images: static QDQ int8 (Conv too); text token ids have no activation range to calibrate
        static["onnx_int8_static"] = (
            onnx_runner(quantize_onnx_static(onnx_fp32, workdir / "static.onnx", calibration), THREADS), workdir / "static.onnx",
            {"quantized_ops": f"QDQ: Conv, MatMul/Gemm int8, ranges from {len(calibration)} train rows"})
    return {
        "torch_fp32": (torch_logits(module), save_torch(module, workdir / "fp32.pt"), {}),
        "torchscript": (torchscript_runner(export_torchscript(module, example, workdir / "ts.pt")), workdir / "ts.pt", {}),
        "onnx_fp32": (onnx_runner(onnx_fp32, THREADS), onnx_fp32, {}),
        "onnx_int8": (onnx_runner(quantize_onnx_int8(onnx_fp32, workdir / "int8.onnx"), THREADS), workdir / "int8.onnx",
                      {"quantized_ops": "MatMul/Gemm int8; Conv and embeddings float"}),
        **static,
        "torch_int8_dynamic": (torch_logits(int8), save_torch(int8, workdir / "int8.pt"),
                               {"quantized_ops": "nn.Linear int8; Conv and embeddings float"}),
        f"pruned_{int(PRUNE_AMOUNT * 100)}": (torch_logits(pruned), save_torch(pruned, workdir / "pruned.pt"),
                                              {"sparsity": round(sparsity(pruned), 4)}),
    }


def latency_ms(fn: Callable, inputs: np.ndarray, rows: int) -> float:
    """p50 milliseconds of one call on one row (text cut to that row's length), after one warm-up call."""
    from dlspark.export.parity import _token_lengths

    singles = [inputs[i:i + 1] for i in range(min(rows, len(inputs)))]
    if inputs.ndim == 3:
        singles = [x[:, :, :max(1, int(_token_lengths(x)[0]))] for x in singles]
    fn(np.ascontiguousarray(singles[0]))
    times = []
    for x in singles:
        x = np.ascontiguousarray(x)
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def measure(name: str, fn: Callable, path: Path, facts: dict, data: Any, reference: np.ndarray | None,
            batch: int, args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    from dlspark.export.optimize import file_sizes
    from dlspark.export.parity import accuracy, batched_logits

    fn(np.ascontiguousarray(data.inputs[:batch]))  # warm-up
    start = time.perf_counter()
    logits = batched_logits(fn, data.inputs, batch)
    seconds = time.perf_counter() - start
    ref = logits if reference is None else reference
    row = {"variant": name, **file_sizes(path), "latency_p50_ms_batch1": latency_ms(fn, data.inputs, args.latency_rows),
           "throughput_rows_per_s": round(len(logits) / seconds, 1), "batch_size": batch,
           "accuracy": round(accuracy(logits, data.labels), 4),
           "agreement_with_fp32": round(float((logits.argmax(1) == ref.argmax(1)).mean()), 4),
           "max_abs_logit_diff": round(float(np.abs(logits - ref).max()), 5), **facts}
    log.info("%s", row)
    return row, logits


def bench_model(kind: str, args: argparse.Namespace, target: Any, workdir: Path) -> dict:
    import torch

    from dlspark.export.parity import SplitData, SplitSource, read_split
    from dlspark.export.registered import trace_example
    from dlspark.inference.model import load_model
    from dlspark.inference.predictors import load_torch_module

    uri, table, batch = MODELS[kind]
    bundle = load_model(target, uri)
    data = read_split(SplitSource(str(REPO / "data" / table), "parquet", "test"), bundle.preprocessing)
    keep = np.flatnonzero(data.labels >= 0)[: args.text_rows if kind == "text" and args.text_rows else None]
    data = SplitData(data.inputs[keep], data.labels[keep], data.description)
    torch.set_num_threads(THREADS)
    module = load_torch_module(bundle.local_dir)
    folder = workdir / kind
    folder.mkdir()
    rows, reference = [], None
    calibration = read_split(SplitSource(str(REPO / "data" / table), "parquet", "train", limit=512), bundle.preprocessing).inputs
    for name, (fn, path, facts) in variants(module, trace_example(data.inputs), folder, calibration).items():
        row, logits = measure(name, fn, path, facts, data, reference, batch, args)
        reference = logits if reference is None else reference
        rows.append(row)
    return {"kind": kind, "model": bundle.ref.label, "model_uri": bundle.ref.uri, "rows": len(keep),
            "data": f"test split of data/{table}: {len(keep)} rows with a label of the model", "variants": rows}


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "quantized_engine": torch.backends.quantized.engine,
            "load_average_at_start": [round(v, 1) for v in os.getloadavg()]}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="image,text", help="which of image,text")
    parser.add_argument("--text-rows", type=int, default=0, help="first N labelled text rows only (0: all)")
    parser.add_argument("--latency-rows", type=int, default=100, help="single-row calls timed per variant")
    parser.add_argument("--out", type=Path, default=RESULTS / "optimize.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    from dlspark.config import MlflowConfig
    from dlspark.tracking import resolve_tracking

    info = machine()
    target = resolve_tracking(MlflowConfig(), str(REPO / "data"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlspark-optimize-bench-") as workdir:
        results = [bench_model(kind, args, target, Path(workdir)) for kind in args.models.split(",")]
    info["load_average_at_end"] = [round(v, 1) for v in os.getloadavg()]
    out = {"benchmark": "optimize", "results": results, "machine": info, "threads": THREADS,
           "prune_amount": PRUNE_AMOUNT, "design": DESIGN,
           "wall_s": round(time.perf_counter() - started, 1),
           "command": " ".join([".venv/bin/python bench/optimize_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps([{r["kind"]: r["variants"]} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
