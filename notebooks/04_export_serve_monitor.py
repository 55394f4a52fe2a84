# Databricks notebook source
# MAGIC %md
# MAGIC # 04 Export, serve and monitor
# MAGIC
# MAGIC **Export:** the image model's `champion` to ONNX with `dlspark.export.onnx.export_registered_onnx`
# MAGIC (what `jobs/models.py export-onnx` runs): parity-checked against the torch model and registered as
# MAGIC `<name>-onnx`.
# MAGIC **Serve:** the FastAPI app of `jobs/serve.py` (`dlspark.serving`), started in-process with FastAPI's
# MAGIC `TestClient`, serving the ONNX export: one `POST /predict` with a PNG from the test split, then `GET /metrics`.
# MAGIC **Monitor:** `pipelines.monitor` (what `jobs/monitor.py` runs) compares the predictions table written by
# MAGIC notebook 03 with the baseline (the training table's test split scored by the model): PSI / KS drift flags,
# MAGIC a metrics table and an HTML report.
# MAGIC
# MAGIC Parameters: `data_dir` (default `data`), `profile` (`local`), `set` (extra `key=value` overrides, `;`-separated).

# COMMAND ----------

from fastapi.testclient import TestClient

from dlspark.export.onnx import export_registered_onnx
from dlspark.notebook import get_spark, new_run, notebook_config, widget
from dlspark.paths import resolve_path
from dlspark.serving import create_app
from dlspark.serving.factory import served_model_uri, service_from_config
from dlspark.tables import read_table
from dlspark.tracking import resolve_tracking
from pipelines.monitor import monitor

data_dir = widget("data_dir", "data")
profile = widget("profile", "local")
# serving decodes images as ingest did: the ingest_images layer comes first, as in jobs/serve.py
cfg = notebook_config(["ingest_images", "image_classification"], [f"paths.data_dir={data_dir}"], profile=profile)
run_id = new_run(cfg)
spark = get_spark(cfg)
target = resolve_tracking(cfg.mlflow, cfg.paths.data_dir)
model_name = cfg.mlflow.registered_model or f"dlspark-{cfg.train.task}"  # as the jobs name it
batch_output = cfg.inference.output or f"tables/predictions/{model_name}"   # where notebook 03 wrote
print(f"run {run_id}: model {model_name}, MLflow at {target.tracking_uri}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## ONNX export of the champion

# COMMAND ----------

export = export_registered_onnx(target, f"models:/{model_name}@champion", f"{model_name}-onnx",
                                experiment=cfg.mlflow.experiment)
print(f"onnx export: {export.model_uri} (champion: {export.promoted}); parity: {export.parity.rows} rows, "
      f"max |logit diff| {export.parity.max_abs_diff:.2e}, argmax agreement {export.parity.agreement:.3f}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Serving the ONNX model

# COMMAND ----------

serve_cfg = notebook_config(["ingest_images", "image_classification"],
                            [f"paths.data_dir={data_dir}", f"serve.model={export.model_uri}"], profile=profile)
image_table = resolve_path(data_dir, serve_cfg.ingest_images.output)
sample = read_table(spark, image_table, fmt=serve_cfg.ingest_images.format).df.where("split = 'test'").first()
png = spark.read.format("binaryFile").load(sample["path"]).first()["content"]
service = service_from_config(serve_cfg)
service.refresh()
with TestClient(create_app(service, serve_cfg.serve)) as client:
    answer = client.post("/predict", content=bytes(png), headers={"content-type": "image/png"})
    metrics_text = client.get("/metrics").text
print(f"serving {served_model_uri(serve_cfg)}: POST /predict {sample['path']} (label {sample['label']}) -> "
      f"HTTP {answer.status_code} {answer.json()}")
print("\n".join(line for line in metrics_text.splitlines() if line.startswith("dlspark_serve_requests_total")))
served = answer.json()["predictions"][0]
batch = read_table(spark, resolve_path(data_dir, batch_output), fmt=cfg.inference.format).df.where(
    f"sha256 = '{sample['sha256']}'").orderBy("scored_at", ascending=False).first()
print(f"same image: served (ONNX) {served['label']} p={served['probability']:.4f}; batch scoring in 03 (torch) "
      + (f"{batch['prediction']} p={batch['probability']:.4f}" if batch else "has not scored it"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Drift monitoring of the batch predictions

# COMMAND ----------

monitor_cfg = notebook_config("image_classification", [f"paths.data_dir={data_dir}", f"monitor.current={batch_output}"],
                              profile=profile)
drift = monitor(spark, monitor_cfg, run_id)
print(f"monitor: {drift.describe()}")
for m in drift.metrics:  # per-class rows (share/<class>, psi/probability:<class>) are in the table and report
    if m.metric.startswith("share/") or ":" in m.metric:
        continue
    verdict = ("DRIFT" if m.drifted else "ok") if m.judged else "not judged"
    print(f"  {m.metric:<32} value={m.value} baseline={m.baseline_value} current={m.current_value} {verdict}")
print(f"drift flags: {[m.metric for m in drift.drifted]}")
print(f"HTML report: {drift.report}")
