"""Transfer learning with few labels: a CNN pretrained on Fashion-MNIST classes 0-4, fine-tuned on classes 5-9.

    .venv/bin/python bench/transfer_bench.py                              # 50 / 200 / 1000 examples per class
    .venv/bin/python bench/transfer_bench.py --per-class 50 --source-epochs 1   # smoke

The ingested image table (``data/tables/images``) is split by class: the source task is classes 0-4 (T-shirt,
trouser, pullover, dress, coat) with every train row; the target task is classes 5-9 (sandal, shirt, sneaker, bag,
ankle boot), relabelled 0-4, with only the first N train rows of each class. Three ways to learn the target, same
CNN, same steps, through ``dlspark.train.run_training`` (the loop ``jobs/train.py`` runs):

- scratch: random initialisation;
- transfer, freeze none: every tensor of the source model but its head (``train.transfer.freeze: none``);
- transfer, freeze all: the source's convolutions frozen, the head alone trains (``freeze: all``).

Each target run trains ``--target-steps`` optimizer steps (epochs = steps / batches per epoch), keeps the best
epoch by validation accuracy (the first ``--val-rows`` target val rows) and reports accuracy on the whole target
test split. Results: ``bench/results/transfer.json`` and ``bench/results/transfer.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SOURCE, TARGET = range(0, 5), range(5, 10)
VARIANTS = (("scratch", None), ("transfer, freeze none", "none"), ("transfer, freeze all", "all"))
log = logging.getLogger("transfer_bench")


def class_table(src: Path, dst: Path, classes: range, per_class: int | None, val_rows: int) -> Path:
    """``dst/split=<s>/part-0.parquet`` with the rows of ``classes`` relabelled 0..k-1; train keeps ``per_class``
    rows per class (file order), val its first ``val_rows``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for split in ("train", "val", "test"):
        table = pq.read_table(src / f"split={split}", columns=["pixels", "shape", "label", "label_index"])
        table = table.filter(pc.is_in(table.column("label_index"), pa.array(list(classes), pa.int32())))
        index = table.column("label_index").to_numpy() - classes.start
        if split == "train" and per_class:
            keep = np.concatenate([np.flatnonzero(index == c)[:per_class] for c in range(len(classes))])
            table, index = table.take(pa.array(np.sort(keep))), index[np.sort(keep)]
        if split == "val":
            table, index = table.slice(0, val_rows), index[:val_rows]
        table = table.set_column(table.schema.get_field_index("label_index"), "label_index", pa.array(index, pa.int32()))
        (dst / f"split={split}").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, dst / f"split={split}" / "part-0.parquet", row_group_size=1024)
    return dst


def job(table: Path, ckpt: Path, run: str, epochs: int, freeze: str | None, init: dict | None, batch: int,  # noqa: ANN201
        norm: tuple) -> object:
    from dlspark.config import FeedConfig, TrainConfig, TransferConfig
    from dlspark.feed import make_spec
    from dlspark.train import TrainJob

    cfg = TrainConfig(epochs=epochs, lr=0.002, warmup_epochs=0.0, early_stopping_patience=0, checkpoint_every_steps=10**6,
                      log_every_steps=0, feed=FeedConfig(batch_size=batch, augment=True),
                      transfer=TransferConfig(model="bench-source" if freeze else None, freeze=freeze or "none"))
    files = {s: (str(table / f"split={s}" / "part-0.parquet"),) for s in ("train", "val", "test")}
    specs = {s: make_spec(cfg.feed, kind="image", files=f, split=s, image_shape=(28, 28, 1), normalize=norm) for s, f in files.items()}
    return TrainJob(config=cfg, train=specs["train"], val=specs["val"], test=specs["test"], num_classes=5,
                    labels=tuple(str(i) for i in range(5)), checkpoint_dir=str(ckpt), run_name=run,
                    model={"name": "cnn", "in_channels": 1, "num_classes": 5}, init_weights=init)


def run(args: argparse.Namespace, work: Path) -> dict:
    import torch

    from dlspark.models.servable import load_trained_model
    from dlspark.train import run_training

    torch.set_num_threads(2)
    images = REPO / "data" / "tables" / "images"
    from dlspark.feed import image_normalization

    source_table = class_table(images, work / "source", SOURCE, None, args.val_rows)
    norm = image_normalization((str(source_table / "split=train" / "part-0.parquet"),), (28, 28, 1))   # every run's
    started = time.perf_counter()
    source = run_training(job(source_table, work / "ckpt", "source", args.source_epochs, None, None, 128, norm), "local")
    source_s = time.perf_counter() - started
    weights = load_trained_model(source.model_path, source.model_spec).state_dict()
    log.info("source: test accuracy %.4f on classes 0-4 (%.0f s)", source.test_metrics["test_accuracy"], source_s)
    rows = []
    for per_class in args.per_class:
        table = class_table(images, work / f"target-{per_class}", TARGET, per_class, args.val_rows)
        batch = min(64, per_class * 5)
        epochs = max(1, math.ceil(args.target_steps / math.ceil(per_class * 5 / batch)))
        for name, freeze in VARIANTS:
            t0 = time.perf_counter()
            result = run_training(job(table, work / "ckpt", f"{per_class}-{freeze or 'scratch'}", epochs, freeze,
                                      weights if freeze else None, batch, norm), "local")
            rows.append({"per_class": per_class, "variant": name, "epochs": epochs, "batch_size": batch,
                         "best_epoch": result.best_epoch, "test_accuracy": round(result.test_metrics["test_accuracy"], 4),
                         "test_rows": int(result.test_metrics["test_count"]), "seconds": round(time.perf_counter() - t0, 1)})
            log.info("%s", rows[-1])
    return {"source": {"classes": list(SOURCE), "epochs": args.source_epochs, "seconds": round(source_s, 1),
                       "test_accuracy": round(source.test_metrics["test_accuracy"], 4)}, "rows": rows}


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, _ in VARIANTS:
        mine = [r for r in rows if r["variant"] == name]
        ax.plot([r["per_class"] for r in mine], [r["test_accuracy"] for r in mine], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled train examples per class (target: Fashion-MNIST classes 5-9)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--target-steps", type=int, default=400, help="optimizer steps per target run")
    parser.add_argument("--val-rows", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="dlspark-transfer-bench-") as tmp:
        result = run(args, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(result["rows"], RESULTS / "transfer.png")
    from bench.optimize_bench import machine

    out = {"benchmark": "transfer", **result, "target_steps": args.target_steps, "val_rows": args.val_rows,
           "machine": machine(), "command": " ".join([".venv/bin/python bench/transfer_bench.py", *sys.argv[1:]]),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (RESULTS / "transfer.json").write_text(json.dumps(out, indent=2) + "\n")
    for r in result["rows"]:
        print(f"{r['per_class']:>5}/class  {r['variant']:<24} test accuracy {r['test_accuracy']:.4f}  ({r['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
