"""Inspect and steer the model registry: list versions, promote one to champion, roll champion back.

    .venv/bin/python jobs/models.py [--pipeline image_classification|sentiment] list
    .venv/bin/python jobs/models.py --pipeline sentiment promote 3
    .venv/bin/python jobs/models.py rollback [--to 2] [--set mlflow.tracking_uri=http://mlflow:5000]
    .venv/bin/python jobs/models.py export-onnx [--source models:/dlspark-fashion-mnist/2] [--as dlspark-fashion-mnist-onnx]
    .venv/bin/python jobs/models.py --pipeline sentiment export-onnx --int8 [--max-accuracy-drop 0.01]
    .venv/bin/python jobs/models.py --pipeline sentiment export-torchscript [--parity-split test] [--min-agreement 0.99]
    .venv/bin/python jobs/models.py --name dlspark-fashion-mnist-keras export-tflite [--int8]

Exports are checked for parity (max |logit diff|, class agreement) on every row of --parity-split of train.table
(resolved against paths.data_dir), as the model's extras/preprocessing.json prepares them; when that table or split
is missing, on the source's logged input example (a warning says so). Below --min-agreement nothing is registered;
an --int8 export is registered only when its accuracy on the split is at most --max-accuracy-drop below the source's.
Each export run measures both models' rows/s on those rows: inference.runtime=auto scores with the fastest.

The registered model is mlflow.registered_model of the pipeline's config (--name overrides it); the store is
mlflow.tracking_uri (null = the embedded sqlite store under paths.data_dir/mlflow). Needs no Spark.
Exit codes: 0 done, 1 failed (unknown model or version, no earlier champion), 2 bad configuration.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import Any, Sequence

from dlspark.cli import EXIT_FAILED, config_from_args, job_parser, run_job
from dlspark.export.parity import ParityError
from dlspark.tracking import TrackingError, list_versions, promote, resolve_tracking, rollback


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--pipeline", default="image_classification", help="config layer naming the model")
    parser.add_argument("--name", default=None, help="registered model name (default: from the config)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions with aliases and promotion metric")
    commands.add_parser("promote", help="make VERSION the champion").add_argument("version")
    commands.add_parser("rollback", help="champion back to the previous one").add_argument("--to", default=None)
    for fmt in ("onnx", "torchscript", "tflite"):
        export = commands.add_parser(f"export-{fmt}", help=f"export the model to {fmt} (parity-checked), register it")
        export.add_argument("--source", default=None, help="model URI (default models:/<name>@champion)")
        export.add_argument("--as", dest="export_name", default=None, help=f"registered name (default <name>-{fmt})")
        export.add_argument("--parity-split", default="test", help="split of train.table to check parity on")
        export.add_argument("--min-agreement", type=float, default=0.99, help="fewest rows with the same class")
    commands.choices["export-tflite"].add_argument("--int8", action="store_true", help="dynamic-range int8 (name <name>-tflite-int8)")
    commands.choices["export-onnx"].add_argument("--int8", action="store_true",
                                                 help="int8 (name <name>-onnx-int8): image models statically, "
                                                      "calibrated on train rows; text models dynamically")
    commands.choices["export-onnx"].add_argument("--max-accuracy-drop", type=float, default=0.01,
                                                 help="int8: most accuracy (0.01 = 1 point) it may lose on the split")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, pipeline=args.pipeline)
    target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
    name = args.name or cfg.registered_model
    try:
        if args.command == "list":
            print(format_versions(name, list_versions(target, name)))
        elif args.command == "promote":
            print(f"{name}: champion -> version {promote(target, name, args.version)}")
        elif args.command == "rollback":
            print(f"{name}: champion -> version {rollback(target, name, args.to)}")
        elif args.command == "export-tflite":  # Keras models (train.framework=tensorflow)
            from dlspark.export.tflite import export_tflite_for_config

            print(export_tflite_for_config(target, cfg, name, source=args.source, export_name=args.export_name,
                                           parity_split=args.parity_split, min_agreement=args.min_agreement, int8=args.int8))
        else:
            print(run_export(args, cfg, target, name))
    except (TrackingError, ParityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def run_export(args: argparse.Namespace, cfg: Any, target: Any, name: str) -> str:
    """Run export-onnx / export-torchscript; the line to print."""
    from dlspark.export.onnx import export_registered_onnx
    from dlspark.export.parity import SplitSource
    from dlspark.export.torchscript import export_registered_torchscript
    from dlspark.paths import resolve_path

    fmt = args.command.removeprefix("export-")
    split = SplitSource(resolve_path(cfg.paths.data_dir, cfg.train.table), cfg.train.table_format, args.parity_split)
    source = args.source or f"models:/{name}@champion"
    options: dict[str, Any] = {"parity_split": split, "experiment": cfg.mlflow.experiment}
    if fmt == "onnx" and args.int8:
        fmt = "onnx-int8"   # lossy: gated by the accuracy drop; agreement is what int8 costs, reported, not gated
        calibration = SplitSource(split.table_uri, split.fmt, "train", limit=512)   # static int8: ranges from train rows
        result = export_registered_onnx(target, source, args.export_name or f"{name}-{fmt}", int8=True,
                                        max_accuracy_drop=args.max_accuracy_drop, min_agreement=0.0,
                                        calibration_split=calibration, **options)
    else:
        run = export_registered_onnx if fmt == "onnx" else export_registered_torchscript
        result = run(target, source, args.export_name or f"{name}-{fmt}", min_agreement=args.min_agreement, **options)
    role = "champion" if result.promoted else "candidate"
    return f"exported {source} to {fmt}: {result.model_uri} ({role}); parity {result.parity}"


def format_versions(name: str, versions: list) -> str:
    """One line per version: number, aliases, metric, run id, creation time (UTC)."""
    lines = [f"{name}: {len(versions)} version(s)", f"{'version':>7}  {'aliases':<20} {'metric':<28} {'run_id':<32}  created"]
    for v in versions:
        metric = f"{v.metric_name}={v.metric_value:.4f}" if v.metric_value is not None else "-"
        created = datetime.fromtimestamp(v.created_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{v.version:>7}  {','.join(v.aliases) or '-':<20} {metric:<28} {v.run_id or '-':<32}  {created}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_job(main))
