"""Ray Data contender of the batch-inference benchmark; run by bench/inference_bench.py under Ray's own venv.

    .venv-ray/bin/python bench/ray_inference.py image PARQUET_DIR MODEL_DIR --cores 2 --batch-size 256 --repeat 3

``read_parquet`` -> ``map_batches`` with an actor pool of ``cores`` actors (one onnxruntime intra-op
thread each, what a Spark task of ours gets; 0.5 logical CPU each, read tasks 0.5 too, so that both fit in
Ray's 2 logical CPUs: with 1 CPU per actor the read tasks never got scheduled and the job hung) running the
same ONNX file ours runs, on the same Parquet files;
each batch's probabilities, class index and class name come back, and the stream is consumed without a sink
(``iter_batches``, as ours ends in Spark's ``noop``). Images: uint8 pixels normalised with the model's mean/std
(extras/preprocessing.json), NCHW float32; text: input_ids + attention_mask stacked [B, 2, L], each batch cut to its
longest row (Ray sees one batch at a time, so no sort). Ray is started before the clock (as our Spark session is);
each timed round builds the dataset anew, so its actors start (and load the model) inside it, which is how Ray Data
runs a job. Prints one JSON object: rows/s per round, and the predicted class of the first --check-rows rows by row_id.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


class OnnxScorer:
    """A Ray Data actor: one onnxruntime session of the model, one thread."""

    def __init__(self, model_dir: str, kind: str) -> None:
        import onnxruntime as ort
        import yaml

        mlmodel = yaml.safe_load((Path(model_dir) / "MLmodel").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(Path(model_dir) / mlmodel["flavors"]["onnx"]["data"]), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        extras = Path(model_dir) / "extras"
        self.pre = json.loads((extras / "preprocessing.json").read_text())
        self.labels = np.array(json.loads((extras / "labels.json").read_text())["labels"], dtype=object)
        self.kind = kind

    def __call__(self, batch: dict) -> dict:
        if self.kind == "image":
            h, w, c = (int(v) for v in self.pre["image_shape"])
            pixels = np.frombuffer(b"".join(batch["pixels"]), np.uint8).reshape(-1, h, w, c)
            mean = np.asarray(self.pre["mean"], np.float32).reshape(1, c, 1, 1)
            std = np.asarray(self.pre["std"], np.float32).reshape(1, c, 1, 1)
            x = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
        else:
            ids, mask = np.stack(batch["input_ids"]), np.stack(batch["attention_mask"])
            width = max(1, int(mask.sum(axis=1).max()))
            x = np.stack([ids[:, :width], mask[:, :width]], axis=1).astype(np.int64)
        logits = self.session.run(None, {self.input: np.ascontiguousarray(x)})[0]
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        index = probs.argmax(axis=1)
        return {"row_id": batch["row_id"], "probabilities": probs.astype(np.float32), "prediction_index": index,
                "prediction": self.labels[index], "probability": probs.max(axis=1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["image", "text"])
    parser.add_argument("parquet")
    parser.add_argument("model_dir")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--check-rows", type=int, default=1024)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    columns = ["row_id", "pixels"] if args.kind == "image" else ["row_id", "input_ids", "attention_mask"]

    def dataset():  # noqa: ANN202
        return ray.data.read_parquet(args.parquet, columns=columns, ray_remote_args={"num_cpus": 0.5}).map_batches(
            OnnxScorer, fn_constructor_args=(args.model_dir, args.kind), batch_size=args.batch_size,
            batch_format="numpy", concurrency=args.cores, num_cpus=0.5)

    warm = time.perf_counter()
    checked: dict[int, int] = {}
    rows = 0
    for batch in dataset().iter_batches(batch_size=None, batch_format="numpy"):   # warm-up + the check
        rows += len(batch["row_id"])
        for rid, idx in zip(batch["row_id"], batch["prediction_index"]):
            if rid < args.check_rows:
                checked[int(rid)] = int(idx)
    warm_s = time.perf_counter() - warm
    rates = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        n = sum(len(b["row_id"]) for b in dataset().iter_batches(batch_size=None, batch_format="numpy"))
        rates.append(n / (time.perf_counter() - start))
    ray.shutdown()
    print(json.dumps({"rows": rows, "rates": rates, "warmup_s": warm_s, "ray": ray.__version__,
                      "check": [checked[k] for k in sorted(checked)]}))


if __name__ == "__main__":
    main()
