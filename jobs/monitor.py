"""Compare a scoring table with the training baseline: PSI/KS drift metrics, a metrics table, an HTML report.

    ./spark-submit.sh jobs/monitor.py --set monitor.current=tables/predictions/dlspark-fashion-mnist
    ./spark-submit.sh jobs/monitor.py --pipeline sentiment --set monitor.current=tables/stream/predictions --no-fail

monitor.current is a predictions table (batch or stream sink) or an input table (scored first); the baseline
(monitor.baseline, default train.table's monitor.baseline_split rows) is scored by the same model. Settings:
conf/base.yaml section monitor. The current table is also cut into slices (monitor.slices: label, prediction,
text length, links, mentions, brightness, source folder, any column) and each slice value is judged against the whole
table: accuracy ratio, positive-rate ratio (four-fifths rule), calibration error. Writes monitor.output (one row per
metric), monitor.slice_output (one row per slice value), monitor.report_dir/<run id>/report.html, and an MLflow run
in mlflow.experiment. Exit codes: 0 no drift, 1 failed, 2 bad configuration, 4 drift or a flagged slice (a PSI
above monitor.psi_threshold, a KS p-value below monitor.ks_pvalue, a slice past its rule; --no-fail: exit 0 and
only flag).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dlspark.cli import run_job, run_spark_pipeline
from pipelines.monitor import monitor

PIPELINES = ("image_classification", "sentiment")
EXIT_DRIFT = 4


def main(argv: Sequence[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--no-fail", action="store_true", help="exit 0 even when drift is found (the rows are still flagged)")
    known, rest = own.parse_known_args(argv)
    run_id, report = run_spark_pipeline(rest, description=__doc__, pipeline=None, fn=monitor, choices=PIPELINES)
    print(f"monitor {run_id}: {report.describe()}")
    for m in report.drifted:
        if m.feature.startswith("slice:"):
            continue
        means = "" if m.baseline_value is None else f"; mean {m.baseline_value:.4g} -> {m.current_value:.4g}"
        print(f"DRIFT {m.metric}: {m.value:.4g} (threshold {m.threshold}{means})")
    for v in report.flagged_slices:
        print(f"SLICE {v.slice}={v.value} ({v.rows} rows): {'; '.join(v.reasons)}")
    return EXIT_DRIFT if report.drifted and not known.no_fail else 0


if __name__ == "__main__":
    sys.exit(run_job(main))
