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


INGEST_RESULTS = ("images", "text")  # then any other images-*.json / text-*.json (e.g. a larger run)


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
{_ceiling(r)}{_contenders(r)}
Stages (driver wall time): {stages}; fixed cost (all but the process stage) {r.get('fixed_s', '-')} s.
{_worker_split(r)}Counts: {r['counts']}.
Machine: {m['cpu']}, {m['nproc']} cores; Python {m['python']}, pyspark {m['pyspark']}, pyarrow {m['pyarrow']},
Pillow {m['pillow']}, transformers {m['transformers']}.
"""


def _ceiling(r: dict) -> str:
    """The no-Spark ceiling row (bare loop + sha256 + Parquet write of the output), when the run measured it."""
    if "bare_written_rate" not in r:
        return ""
    return (f"\nCeiling, not a baseline: the bare loop plus the work any ingest must add per image (sha256 of the file, "
            f"Parquet write of the pixels), in one process without Spark, reaches {r['bare_written_rate']} images/s = "
            f"**{r['bare_written_ratio']}** of the bare loop on the same {r['bare_items']} files.\n")


_CONTENDERS = {
    "images": {
        "bare_x_cores": "(a) bare single-process Pillow loop x cores",
        "ceiling": "(b) no-Spark ceiling, all cores (multiprocessing: decode + resize + sha256 + Parquet write)",
        "spark_image_source": "(c) Spark's image source + resize pandas UDF + Parquet write",
        "ray_read_images": "(d) Ray Data `read_images(size=...)` -> `write_parquet`",
        "ray_binary_map_batches": "(d) Ray Data `read_binary_files` + `map_batches` (decode, resize, sha256) -> `write_parquet`",
        "ours": "(e) dlspark full pipeline (listing, ledger, dedup, quarantine, commit, summary)",
    },
    "text": {
        "bare_x_cores": "(a) bare single-process loop (pandas CSV, our normalisation, transformers tokenizer) x cores",
        "ceiling": "(b) no-Spark ceiling, all cores (multiprocessing: CSV byte ranges, normalise, sha256, Rust tokenizer, "
                   "Parquet write)",
        "ray_map_batches": "(d) Ray Data `read_csv` + `map_batches` (normalise, sha256, same tokenizer) -> `write_parquet`",
        "ours": "(e) dlspark full pipeline (listing, ledger, dedup, quarantine, commit, summary)",
    },
}


def _contenders(r: dict) -> str:
    """The side-by-side table of a run that measured the contenders on the same input."""
    if "contenders" not in r:
        return ""
    names = _CONTENDERS.get(r["benchmark"], {})
    rows = "\n".join(f"| {names.get(k, k)} | {v:,.1f} | {v / r['contenders']['bare_x_cores']:.3f} |"
                     for k, v in r["contenders"].items())
    ratios = ", ".join(f"{k} **{v}**" for k, v in r["ratios"].items())
    ray = f" (Ray {r['ray_version']}, its own venv: `bench/setup_ray_venv.sh`)" if r.get("ray_version") else ""
    what = f"{r['items']:,} files" if r["benchmark"] == "images" else f"{r['items']:,} rows of one CSV file"
    target = "0.85 of the ceiling" if r["benchmark"] == "images" else "0.90 of the ceiling"
    return f"""
Side by side on the same {what}, page cache warm, {r['machine']['spark_cores']} cores each{ray}:

| contender | {r['unit']} | / (a) |
| --- | --- | --- |
{rows}

Ratios: {ratios} (targets: ours >= {target}, >= 1.3x the best other tool).
"""


def _growth_section(r: dict) -> str:
    """Cost growth: seconds per 1k items and peak RSS at each size, each size a fresh process."""
    rows = "\n".join(
        f"| {p['items']:,} | {p['wall_s']} | {p['s_per_1k']} | {p['process_s_per_1k']} | {p['fixed_s']} | "
        f"{p['peak_rss_mib']['ours_python_driver']} ({p['peak_rss_mib'].get('ours_python_driver_growth', '-')}) | "
        f"{p['peak_rss_mib']['ours_jvm']} | {p['peak_rss_mib']['ours']} |"
        for p in r["points"])
    return f"""
## Ingest cost growth: {r['benchmark'].removeprefix('growth-')}, {r['data']}

Command: `.venv/bin/python {r['command']}` ({r['measured_at']}); each size runs in a fresh process (its own
JVM and driver), the full pipeline as in the table above.

| {r['unit']} | wall s | s per 1k | process s per 1k | fixed s | driver peak RSS MiB (growth in run) | JVM MiB | all MiB |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Seconds per 1k at the largest size / at the smallest: **{r['s_per_1k_last_over_first']}** (target <= 1.10); Python
driver peak RSS, largest / smallest: **{r['driver_rss_last_over_first']}** (the driver process also holds the
harness's own list of the input paths; its growth during the ingest itself is in brackets).

![cost growth](bench/results/growth-{r['benchmark'].removeprefix('growth-')}.png)
"""


def _worker_split(r: dict) -> str:
    if not r.get("worker_s"):
        return ""
    split = ", ".join(f"{k} {v:.1f}s" for k, v in r["worker_s"].items())
    return f"Inside the workers (seconds summed over tasks): {split}.\n"


def _tflite_section(r: dict) -> str:
    res, m = r["result"], r["machine"]
    rows = "\n".join(
        f"| {v['variant']} | {v['bytes'] / 1e6:,.2f} | {v['gzip_bytes'] / 1e6:,.2f} | {v['latency_p50_ms_batch1']} / "
        f"{v['latency_p95_ms_batch1']} | {v['throughput_rows_per_s']:,.1f} | {v['accuracy']:.4f} | "
        f"{v['agreement_with_savedmodel']:.4f} | {v['max_abs_logit_diff']:.3g} |" for v in res["variants"])
    note = f" {r['note'][:1].upper()}{r['note'][1:]}." if r.get("note") else ""
    batch = res["variants"][0]["batch_size"]
    return f"""
## Keras: SavedModel vs TFLite fp32 vs TFLite dynamic int8

Command: `{r['command']}` ({r['measured_at']}, {r['wall_s']} s). Model {res['model_uri']} (the Keras CNN), {res['data']};
{r['threads']} threads, CPU, {m['interpreter']}. SavedModel size = tar of its folder.{note}

| variant | MB | MB gzip | p50 / p95 ms, batch 1 | rows/s, batch {batch} | accuracy | same class as SavedModel | max abs logit diff |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Machine: {m['cpu']}, {m['nproc']} cores, load average at start {m['load_average_at_start']}; Python {m['python']},
tensorflow {m['tensorflow']}.
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


def _stream_section(result: dict) -> str:
    runs = result.get("runs") or [result]          # one-run files from before the curve
    first, t = runs[0], result.get("targets", {})
    m = first["machine"]
    rows = []
    for r in runs:
        verdict = "keeps up" if r["keeps_up"] else "falls behind"
        lat, lag, sink = r["batch_ms"], r["lag_s"], r.get("sink_lag_s") or {}
        q = ", ".join(f"{k} {v}" for k, v in sorted((r.get("quarantine_reasons") or {}).items())) or "none"
        reconciled = "reconciled" if r["reconciled"] else "**NOT reconciled**"
        rows.append(f"| {r['input_rate']:g} msg/s | **{r['sustained_rows_per_s']} msg/s** ({verdict}) | {r['busy_rows_per_s']} | "
                    f"{lat['p50']} / **{lat['p95']}** ms | {r['mean_rows_per_batch']} | {lag['p50']} / {lag['p95']} s | "
                    f"{sink.get('p50', '-')} / **{sink.get('p95', '-')}** s | {r['lines']} = {r['predicted']} + "
                    f"{r['quarantined']} ({reconciled}; {q}) |")
    best = result.get("highest_rate_within_targets")
    best_line = (f"Highest input rate that met every target (sustained >= 95% of input, batch p95 < "
                 f"{t.get('batch_p95_ms', 2000)} ms, sink lag p95 < {t.get('sink_lag_p95_s', 3)} s): "
                 f"**{best:g} msg/s**." if best else "No rate met every target.") if "runs" in result else ""
    command = result.get("command", first.get("command"))
    return f"""
## Streaming sentiment: sustained rate and micro-batch latency ({first['model']})

Command: `.venv/bin/python {command}` ({result.get('measured_at', first['measured_at'])}). The replay generator writes tweets
(one JSON-lines file per {first['tick_s']:g} s, {first.get('malformed_fraction', 0):.0%} of the lines malformed) for
{first['seconds']:g} s per rate while `pipelines/stream_sentiment.py` scores them with {first['model']}
(runtime: {first.get('runtime', 'source')}) on local[{m['spark_cores']}], trigger {first['trigger_s']:g} s. Figures from
the predictions query's progress, the first batch (a warm-up file; the model loads: {first['first_batch_ms']} ms) left out.

| input rate | sustained rate | busy rows/s | batch p50 / p95 | rows/batch | arrival-to-batch p50 / p95 | \
arrival-to-sink p50 / p95 | lines = predicted + quarantined |
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

{best_line}
Sustained = rows / (first trigger start to last batch end); busy = rows / time spent in triggers (the rate the
stream could take); lag = per row, file arrival to the start of the batch that scored it; sink = file arrival to
the commit of the sink batch holding the row (its `_spark_metadata` entry), when readers see it.
Machine: {m['cpu']}; Python {m['python']}, pyspark {m['pyspark']}, torch {m['torch']}. {first.get('note', '')}
"""


INFERENCE_CONTENDERS = (("bare", "bare single-process loop (eager torch)"),
                        ("ours", "dlspark score_dataframe (mapInArrow), runtime auto"),
                        ("ours_source", "dlspark score_dataframe on the torch version (no runtime choice)"),
                        ("predict_batch_udf", "pyspark predict_batch_udf"), ("mlflow_spark_udf", "mlflow.pyfunc.spark_udf"),
                        ("ray_data", "Ray Data map_batches, actor pool, same ONNX"))


def _inference_section(r: dict) -> str:
    m, targets = r["machine"], r["targets"]
    blocks = []
    for res in r["results"]:
        rates, ratios, errors = res["rows_per_s"], res["ratios"], res.get("errors", {})
        lines = []
        for key, label in INFERENCE_CONTENDERS:
            if key not in rates and key not in errors:
                continue
            if key in errors:
                lines.append(f"| {label} | could not run: {errors[key].splitlines()[-1][:160]} | | |")
                continue
            ratio = ratios.get(f"ours_over_{key}")
            target = targets.get(f"ours_over_{key}")
            verdict = "" if ratio is None or target is None else f"{ratio} (target {target}: {'meets' if ratio >= target else 'below'})"
            agree = res["agreement"].get(key)
            same = f"{agree['same_class']:.4f} of {agree['rows']}" if agree else "reference"
            lines.append(f"| {label} | {rates[key]:,.1f} | {'**' + verdict + '**' if verdict else ''} | {same} |")
        blocks.append(f"""
### {res['kind']}: {res['model']} on {res['data']}

{res['partitions']} partitions, batch {res['batch_size']} rows per forward pass, Arrow batches of {res['arrow_batch']} rows;
mlflow model load {res['mlflow_load_s']} s (paid by spark_udf in every task). Ours ran on {res.get('runtime', 'source')}
({res.get('runtime_reason', 'no runtime choice')}).

| contender | rows/s | ours / this | same class as bare |
| --- | --- | --- | --- |
{chr(10).join(lines)}
""")
    threads = ", ".join(f"OMP_NUM_THREADS={t['OMP_NUM_THREADS']} -> torch {t['torch_threads']}" for t in r["worker_threads"])
    return f"""
## Batch inference: dlspark vs predict_batch_udf vs mlflow spark_udf vs a bare loop

Command: `{r['command']}` ({r['measured_at']}). Spark {r['spark_conf']['spark.master']}, one thread per task (Python
workers: {threads}); the bare loop runs in one process with {r['bare_threads']} torch threads on the same rows preloaded as
numpy. Same registered model (pinned version), same rows (the test split tiled, read from the same Parquet files),
same batch size; every Spark query ends in the `noop` sink; median of the timed rounds; {r['timing']}. {r.get('note', '')}

{chr(10).join(f"- {name}: {text}" for name, text in r['design'].items())}
{''.join(blocks)}
Machine: {m['cpu']}, {m['nproc']} cores, load average at start {m['load_average_at_start']}; Python {m['python']},
torch {m['torch']}, pyspark {m['pyspark']}, mlflow {m['mlflow']}, pyarrow {m['pyarrow']}.
"""


def _serve_section(r: dict) -> str:
    rows = []
    for lv in r["levels"]:
        p95 = lv["p95_ms"]
        verdict = "" if p95 is None else (" (meets)" if lv["meets_p95_target"] else " (**misses**)")
        busy = f"{lv['rejected_per_s']:,.1f}/s, p50 {lv['p50_503_ms']} / p99 {lv['p99_503_ms']} ms" if lv["rejected_503"] else "0"
        rows.append(f"| {lv['concurrency']} | {lv['requests_per_s']:,.1f} | {lv['p50_ms']} | {p95}{verdict} | {lv['p99_ms']} | "
                    f"{lv['mean_batch_size']} | {busy} | {lv['errors']} |")
    m, ready = r["machine"], r.get("ready") or {}
    runtime = f" on runtime {ready['runtime']} ({ready['runtime_model']}: {ready['runtime_reason']})" if ready.get("runtime") else ""
    soak = _soak_lines(r["soak"], r.get("capacity_rps")) if r.get("soak") else ""
    return f"""
## REST serving: jobs/serve.py under load

Command: `{r['command']}` ({r['measured_at']}). Server `{r['server']}` serving {r['model']}{runtime} (ready after
{r['startup_s']} s); {r['request']}. The client (one asyncio loop, prepared requests on keep-alive connections) shares
the 2 cores with the server; Retry-After {r.get('retry_after', 'ignored')}. Target: p95 < {r['p95_target_ms']:.0f} ms
for the answered (200) requests; past capacity
the latency budget (`serve.max_queue_ms`) answers 503 before decoding, at the latency shown.

| concurrency | answered/s | p50 ms | p95 ms | p99 ms | mean batch | 503s (rate, latency) | other errors |
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

{soak}Machine: {m['cpu']}, {m['nproc']} cores, load average at start {m['load_average_at_start']}; Python {m['python']}.
"""


def _soak_lines(s: dict, capacity: float | None) -> str:
    worst = max((w["p95_ms"] or 0.0) for w in s["windows"])
    return (f"Soak: {s['seconds']:.0f} s open loop at {s['rate']:.0f} requests/s (80% of the capacity {capacity:,.0f}/s) over "
            f"{s['connections']} connections: {s['requests_per_s']:,.1f} answered/s, p50 {s['p50_ms']} / p95 {s['p95_ms']} / "
            f"p99 {s['p99_ms']} ms (worst {len(s['windows'])}-window p95 {worst} ms), {s['rejected_503']} x 503, "
            f"{s['errors']} other errors; server RSS {s['rss'][0]['rss_mib']} MiB at start, {s['rss_max_mib']} MiB max, "
            f"{s['rss_growth_after_first_minute_mib']:+} MiB from minute 1 to the end.\n\n")


def _optimize_section(r: dict) -> str:
    m, blocks = r["machine"], []
    for res in r["results"]:
        lines = []
        for v in res["variants"]:
            extra = f"sparsity {v['sparsity']:.2f}" if "sparsity" in v else v.get("quantized_ops", "")
            lines.append(f"| {v['variant']} | {v['bytes'] / 1e6:,.2f} | {v['gzip_bytes'] / 1e6:,.2f} | "
                         f"{v['latency_p50_ms_batch1']} | {v['throughput_rows_per_s']:,.1f} | {v['accuracy']:.4f} | "
                         f"{v['agreement_with_fp32']:.4f} | {v['max_abs_logit_diff']:.3g} | {extra} |")
        batch = res["variants"][0]["batch_size"]
        blocks.append(f"""
### {res['kind']}: {res['model']} on {res['data']}

| variant | MB on disk | MB gzip | p50 ms, batch 1 | rows/s, batch {batch} | accuracy | same class as fp32 | max abs logit diff | notes |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(lines)}
""")
    return f"""
## Export and optimisation: float vs TorchScript vs ONNX vs int8 vs pruned

Command: `{r['command']}` ({r['measured_at']}, {r['wall_s']} s). One process, {r['threads']} torch and onnxruntime
intra-op threads, CPU; pruned = global L1 magnitude pruning of {r['prune_amount']:.0%} of Linear/Conv weights, no
fine-tuning. Dynamic int8 (weights int8, activations quantized per batch) covers Linear/MatMul layers only, so the
CNN's convolutions stay float and gain nothing; static int8 (QDQ, activation ranges calibrated on 512 train rows,
per-channel 7-bit weights) covers the convolutions too.

{chr(10).join(f"- {name}: {text}" for name, text in r['design'].items())}
{''.join(blocks)}
Machine: {m['cpu']}, {m['nproc']} cores, load average at start {m['load_average_at_start']}, at end
{m.get('load_average_at_end')}; Python {m['python']}, torch {m['torch']} (quantized engine {m['quantized_engine']}),
onnxruntime {m['onnxruntime']}.
"""


def _distill_section(r: dict) -> str:
    m, blocks = r["machine"], []
    for res in r["results"]:
        lines = [f"| {x['variant']} | not registered | | | | | |" if "missing" in x else
                 f"| {x['variant']} | {x['model']} | {x['accuracy']:.4f} | {x['mb']} | {x['latency_p50_ms_batch1']} | "
                 f"{x['throughput_rows_per_s']:,.1f} | {x['speedup_over_teacher']} |" for x in res["rows"]]
        v = res.get("verdict") or {}
        verdict = (f"\nDistilled student: {v['points_below_teacher']:+g} points below the teacher (target <= "
                   f"{v['targets']['max_points_below_teacher']:g}), {v['speedup_over_teacher']}x its throughput (target >= "
                   f"{v['targets']['min_speedup_over_teacher']:g}), {'above' if v['beats_student_without_teacher'] else 'NOT above'} "
                   f"the same student trained without the teacher: **{'meets' if v['meets'] else 'misses'}** the targets.\n"
                   if v else "")
        blocks.append(f"""
### {res['task']}: {res['data']} ({res['test_rows']} labelled rows)

| model | registered | accuracy | MB (.onnx) | p50 ms, batch 1 | rows/s, batch {r['batch_size']} | x teacher rows/s |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(lines)}
{verdict}""")
    return f"""
## Distillation: teacher vs student vs distilled student vs int8 distilled student

Command: `{r['command']}` ({r['measured_at']}, {r['wall_s']} s). Every model as ONNX on onnxruntime, one process,
{r['threads']} intra-op threads, CPU; the int8 student is the distilled one quantized as `jobs/models.py export-onnx --int8`
does (images: static QDQ calibrated on 512 train rows; text: dynamic). The students were trained with
`./spark-submit.sh jobs/train.py --pipeline sentiment_student` (distilled) and the same with
`--set train.distill.teacher=null` (labels only); the image students with `--pipeline image_classification` and
`train.model_options={{widths: [8, 16, 32], hidden: 32}}`, 4 epochs, with and without `train.distill.teacher`.
{''.join(blocks)}
Machine: {m['cpu']}, {m['nproc']} cores, load average at start {m['load_average_at_start']}, at end
{m.get('load_average_at_end')}; Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}.
"""


def _transfer_section(r: dict) -> str:
    sizes = sorted({x["per_class"] for x in r["rows"]})
    names = list(dict.fromkeys(x["variant"] for x in r["rows"]))
    acc = {(x["variant"], x["per_class"]): x for x in r["rows"]}
    lines = [f"| {n} | " + " | ".join(f"{acc[(n, s)]['test_accuracy']:.4f}" if (n, s) in acc else "-" for s in sizes) + " |"
             for n in names]
    s, m = r["source"], r["machine"]
    return f"""
## Transfer learning with few labels: Fashion-MNIST classes 0-4 -> 5-9

Command: `{r['command']}` ({r['measured_at']}). A CNN pretrained on classes 0-4 ({s['epochs']} epochs, {s['seconds']} s,
test accuracy {s['test_accuracy']:.4f} on those classes), then classes 5-9 learnt from N labelled train images per class,
{r['target_steps']} optimizer steps each, best epoch by accuracy on {r['val_rows']} val rows; test accuracy on the whole
target test split ({r['rows'][0]['test_rows']} rows). `train.transfer.freeze: none` fine-tunes every layer from the source's
weights, `all` freezes the convolutions and trains the head alone (both tasks have 5 classes, so the source's head is
carried too); every variant uses the same `train.lr`.

| | {' | '.join(f'{n} per class' for n in sizes)} |
| --- | {' | '.join('---' for _ in sizes)} |
{chr(10).join(lines)}

![transfer learning curve](bench/results/transfer.png)

Machine: {m['cpu']}, {m['nproc']} cores; torch {m['torch']}.
"""


def _explain_section(r: dict) -> str:
    m = r["machine"]
    lines = [f"| {x['kind']} | {x['model']} | {x['explained']} of {x['rows']} | {x['steps']} | {x['seconds']} | "
             f"**{x['rows_per_s']}** | {x['bare_rows_per_s']} | {x['ours_over_bare']} |" for x in r["results"]]
    return f"""
## Explanations: Integrated Gradients rows/s on local[2]

Command: `{r['command']}` ({r['measured_at']}). `jobs/explain.py`'s pipeline on a seeded sample of each champion's
test split, timed from the explaining job's start to the written table (model shipping, Arrow, the Parquet write
included); bare: the same attribution function in one process with 2 torch threads on rows already in memory.
Each row costs `steps` forward and backward passes of the model.

| model | | rows | IG steps | seconds | rows/s | bare rows/s | ours / bare |
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(lines)}

Machine: {m['cpu']}, {m['nproc']} cores, load average at start {m['load_average_at_start']}; torch {m['torch']}.
"""


def _ann_section(r: dict) -> str:
    m = r["machine"]
    lines = [f"| {x['ef_search']} | **{x['recall_at_10']:.4f}** | {x['recall_at_10_indexed']:.4f} | "
             f"{x['batch_queries_per_s']:,} | {x['single_query_p50_ms']} | {x['single_query_p95_ms']} |" for x in r["results"]]
    source = r.get("source", {})
    if r["kind"] == "text":
        what = (f"{r['vectors'] + r['queries']:,} texts: the demo's {source.get('table_rows', 0):,} distinct tweets and "
                f"{source.get('spliced_texts', 0):,} texts spliced from two of them (the first half of one's words, the "
                "second half of another's)")
        model = f"{r['model']}'s head input (MiniLM mean pooling"
    else:
        what = f"{r['vectors'] + r['queries']:,} Fashion-MNIST images of the demo table"
        model = f"{r['model']}'s head input (the CNN's penultimate layer"
    return f"""
## Nearest neighbours: faiss HNSW vs exact top-k over {r['vectors']:,} {r['kind']} embeddings

Command: `{r['command']}` ({r['measured_at']}). Rows: {what}. Embeddings: {model}, {r['dim']} dimensions, unit
length). Index: {r['index']} over all rows but {r['queries']:,} held
out, built in {r['build_s']} s. Recall@10 against exact top-k (numpy, {r['exact_queries_per_s']} queries/s in
batches) for the held-out rows (not in the index: what `POST /similar` asks) and for {r['queries']:,} indexed rows
(`GET /similar?id=`); 2 threads. Targets: recall@10 >= {r['target']['recall_at_10']}, a query well under
{r['target']['single_query_p95_ms']} ms.

| ef_search | recall@10 held out | recall@10 indexed | queries/s (one batch) | one query p50 ms | one query p95 ms |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(lines)}

Machine: {m['cpu']}, {m['nproc']} cores, load average at start {m['load_average_at_start']}; faiss {m['faiss']}.
"""


def _similar_section(r: dict) -> str:
    m = r["machine"]
    rows = []
    for kind in r["kinds"]:
        for x in kind["levels"]:
            rows.append(f"| {kind['kind']} ({kind['model']}/{kind['version']}, {kind['indexed']:,} indexed) | {x['request']} | "
                        f"{x['concurrency']} | {x['requests_per_s']} | {x['p50_ms']} | **{x['p95_ms']}** | {x['p99_ms']} | "
                        f"{x['rejected_503']} | {x['errors']} |")
    return f"""
## `GET/POST /similar`: latency of similarity answers from the served index

Command: `{r['command']}` ({r['measured_at']}). `jobs/serve.py` with the demo champions' indexes (built by
`jobs/embed.py`); the client of `bench/serve_bench.py` (keep-alive connections, one asyncio loop, closed loop) on
the same {m['nproc']} cores. GET: a stored vector and one HNSW search (k 10, ef_search 128). POST: a PNG of a test
image or a test tweet as text/plain, decoded or tokenized as `/predict` does, embedded by the model's embedding
graph on onnxruntime (`serve.similar.runtime: onnx`, checked against torch at load), one search. Baseline, same
run: the same POSTs on a server whose `serve.similar.runtime` is torch (the eager module embeds). POSTs from
concurrent requests share one forward pass (a micro-batcher that waits for nothing: it takes what queued while
the previous pass ran). Past capacity the server answers 503 with `Retry-After`
(`serve.max_queue_ms`, 50 ms) instead of queueing; those are counted apart, not in the latencies. Target: p95 <
{r['target']['p95_ms']:.0f} ms.

| index | request | concurrency | answers/s | p50 ms | p95 ms | p99 ms | 503 (over the latency budget) | errors |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Machine: {m['cpu']}, load average at start {m['load_average_at_start']}.
"""


REPORT_SAMPLE_COMMAND = ('./spark-submit.sh jobs/train.py --pipeline image_classification --set "train.model_options='
                         '{widths: [8, 16, 32], hidden: 32}" --set train.distill.teacher=models:/dlspark-fashion-mnist@champion '
                         '--set train.epochs=4 --set mlflow.registered_model=dlspark-fashion-mnist-student '
                         '--set train.run_name=fashion-student-2')


def _report_sample_section(folder: Path) -> str:
    """The PNGs of one training run's report (``train.report``), copied from ``<checkpoint_dir>/<run>/report/``."""
    pictures = "\n\n".join(f"![{p.stem}](bench/results/{folder.name}/{p.name})" for p in sorted(folder.glob("*.png")))
    return f"""
## Training report: a sample

Every training run writes `<checkpoint_dir>/<run_name>/report/report.html` and logs it to MLflow (`train.report`).
These are the pictures of the distilled Fashion-MNIST student's run (`{REPORT_SAMPLE_COMMAND}`, copied from
`data/checkpoints/fashion-student-2/report/`): learning curves, the confusion matrix of the test split, the
calibration diagram (ECE) and the 20 most confident mistakes; the HTML page adds per-class precision / recall / F1.

{pictures}
"""


def write_benchmarks_md(results: Path, out: Path) -> None:
    files = [results / f"{name}.json" for name in INGEST_RESULTS if (results / f"{name}.json").exists()]
    files += sorted(f for name in INGEST_RESULTS for f in results.glob(f"{name}-*.json"))
    body = "".join(_section(json.loads(f.read_text())) for f in files)
    for kind in ("images", "text"):
        if (results / f"growth-{kind}.json").exists():
            body += _growth_section(json.loads((results / f"growth-{kind}.json").read_text()))
    if (results / "feeder.json").exists():
        body += _feeder_section(json.loads((results / "feeder.json").read_text()))
    if (results / "train.json").exists():
        body += _train_section(json.loads((results / "train.json").read_text()))
    if (results / "inference.json").exists():
        body += _inference_section(json.loads((results / "inference.json").read_text()))
    for stream in sorted(results.glob("stream*.json")):
        body += _stream_section(json.loads(stream.read_text()))
    if (results / "serve.json").exists():
        body += _serve_section(json.loads((results / "serve.json").read_text()))
    if (results / "optimize.json").exists():
        body += _optimize_section(json.loads((results / "optimize.json").read_text()))
    if (results / "distill.json").exists():
        body += _distill_section(json.loads((results / "distill.json").read_text()))
    if (results / "transfer.json").exists():
        body += _transfer_section(json.loads((results / "transfer.json").read_text()))
    if (results / "tflite.json").exists():
        body += _tflite_section(json.loads((results / "tflite.json").read_text()))
    for kind in ("image", "text"):
        if (results / f"ann-{kind}.json").exists():
            body += _ann_section(json.loads((results / f"ann-{kind}.json").read_text()))
    if (results / "similar.json").exists():
        body += _similar_section(json.loads((results / "similar.json").read_text()))
    if (results / "explain.json").exists():
        body += _explain_section(json.loads((results / "explain.json").read_text()))
    if (results / "report-sample").is_dir():
        body += _report_sample_section(results / "report-sample")
    out.write_text(HEADER + (body or "\nNo results yet.\n"))
