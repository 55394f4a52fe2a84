"""Render bench/results/*.json into BENCHMARKS.md (every figure comes from a results file)."""
from __future__ import annotations

import json
from pathlib import Path

HEADER = """# Benchmarks

Every figure below is written by `bench/ingest_bench.py` from its own measurements; baseline and ours
are measured back to back in the same run, on the same files. Regenerate with the command in each
section (then `.venv/bin/python bench/ingest_bench.py report`).
"""


INGEST_RESULTS = ("images", "text")


def _section(r: dict) -> str:
    m = r["machine"]
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stage_s"].items())
    verdict = "meets" if r["ratio"] >= r["target"] else "below"
    cores = m["spark_cores"]
    return f"""
## Ingest {r['benchmark']}: {r['data']}

Command: `.venv/bin/python {r['command']}` ({r['measured_at']})

| | rate ({r['unit']}) | peak RSS |
| --- | --- | --- |
| bare single-process loop ({r['bare_items']} items) | {r['bare_rate']} | {r['peak_rss_mib']['bare']} MiB |
| bare x {m['spark_cores']} cores (baseline) | {r['bare_scaled']} | |
| dlspark pipeline, local[{cores}], {r['items']} items, {r['ours_wall_s']} s | {r['ours_rate']} | {r['peak_rss_mib']['ours']} MiB |
| **ratio ours / baseline** | **{r['ratio']}** (target {r['target']}: {verdict}) | |

Stages: {stages}. Counts: {r['counts']}.
Machine: {m['cpu']}, {m['nproc']} cores; Python {m['python']}, pyspark {m['pyspark']}, pyarrow {m['pyarrow']},
Pillow {m['pillow']}, transformers {m['transformers']}.
"""


def write_benchmarks_md(results: Path, out: Path) -> None:
    files = [results / f"{name}.json" for name in INGEST_RESULTS if (results / f"{name}.json").exists()]
    body = "".join(_section(json.loads(f.read_text())) for f in files)
    out.write_text(HEADER + (body or "\nNo results yet.\n"))
