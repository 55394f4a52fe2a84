"""Render bench/results/*.json into BENCHMARKS.md (every figure comes from a results file)."""
from __future__ import annotations

import json
from pathlib import Path

HEADER = """# Benchmarks

Every figure below is rendered by `bench/report.py` from `bench/results/*.json`, which the benchmark
scripts write from their own measurements; baselines and ours are measured back to back in the same run,
on the same data. Regenerate with the command in each section (then `.venv/bin/python bench/ingest_bench.py report`).
The machine has 2 cores; a figure measured while other work ran on it says so.
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


def _feeder_section(r: dict) -> str:
    rows = []
    for res in r["results"]:
        rates, ratios = res["rows_per_s"], res["ratios"]
        rows.append(f"| {res['data']} | {rates['numpy']:,.0f} | {rates['arrow']:,.0f} | {rates['petastorm']:,.0f} | "
                    f"**{ratios['arrow_over_petastorm']}** | {res.get('petastorm_convert_s', '-')} s |")
    note = r.get("note", "")
    return f"""
## Training feeders: arrow vs petastorm vs in-memory numpy

Command: `{r.get('command', '.venv/bin/python bench/feeder_bench.py')}` ({r.get('measured_at', '')}). One rank, batch
{r['results'][0]['batch_size']}, shuffle on, augmentation off; rows/s, median of the epochs. Target: arrow >= \
{r['target']['arrow_over_petastorm']}x petastorm. {note}

| data | in-memory numpy | arrow feeder | petastorm feeder | arrow / petastorm | petastorm materialisation |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}
"""


def _train_section(r: dict) -> str:
    f = r.get("feeder_vs_memory")
    if not f:
        return ""
    runs = f["runs"]
    lines = "\n".join(f"| {name} | {v['images_per_s']:.0f} | {v['step_ms']:.0f} |" for name, v in runs.items())
    return f"""
## Training step rate: real feeder vs in-memory batches

Command: `.venv/bin/python bench/train_bench.py all --steps {f["steps"]}` ({r['system']['measured_at'][:19]}); compact CNN on
Fashion-MNIST 28x28x1, batch {f['batch_size']}, local backend, {r['system']['device']}. Target >= 0.90. {r.get('note', '')}

| run | images/s | ms/step |
| --- | --- | --- |
{lines}

Ratio arrow feeder / in-memory: **{f['ratio_feeder_vs_memory']:.2f}**.
{_backends(r.get("backends"))}"""


def _backends(b: dict | None) -> str:
    if not b:
        return ""
    lines = "\n".join(
        f"| {name} | {v['world_size']} | {v['step_ms']:.0f} | {v['images_per_s']:.0f} | {v['wall_s']:.0f} | "
        f"{v['test_accuracy']:.4f} |" for name, v in b["results"].items())
    return f"""
## Training backends: local vs horovod vs torch_distributor

Command: `.venv/bin/python bench/train_bench.py backends --rows {b['train_rows']} --epochs {b['epochs']}`; the same job
(compact CNN, first {b['train_rows']} Fashion-MNIST train rows, {b['epochs']} epochs, batch {b['per_worker_batch']} per worker, LR
scaled by world size), local[2]. Step time = rank 0's training seconds / optimizer steps; wall includes process
launch, validation and the test evaluation; accuracy on the whole test split.

| backend | processes | ms/step | images/s | wall s | test accuracy |
| --- | --- | --- | --- | --- | --- |
{lines}
"""


def write_benchmarks_md(results: Path, out: Path) -> None:
    files = [results / f"{name}.json" for name in INGEST_RESULTS if (results / f"{name}.json").exists()]
    body = "".join(_section(json.loads(f.read_text())) for f in files)
    if (results / "feeder.json").exists():
        body += _feeder_section(json.loads((results / "feeder.json").read_text()))
    if (results / "train.json").exists():
        body += _train_section(json.loads((results / "train.json").read_text()))
    out.write_text(HEADER + (body or "\nNo results yet.\n"))
