# Databricks notebook source
# MAGIC %md
# MAGIC # 01 Ingest images and text
# MAGIC
# MAGIC Runs `pipelines.ingest_images` and `pipelines.ingest_text` (what `jobs/ingest_images.py` and
# MAGIC `jobs/ingest_text.py` run) on the landing folders under `data_dir`, then shows the reconciled counts,
# MAGIC a few rows of each table and the quarantined records. Reruns are incremental: files already ingested
# MAGIC are skipped. Landing data for the demo: `.venv/bin/python jobs/prepare_demo_data.py`.
# MAGIC
# MAGIC Parameters (Databricks widgets, else `DLSPARK_NB_<NAME>` environment variables, else the default):
# MAGIC `data_dir` (default `data`), `profile` (`local`), `set` (extra `key=value` overrides separated by `;`).

# COMMAND ----------

from dlspark.notebook import get_spark, new_run, notebook_config, widget
from dlspark.paths import resolve_path
from dlspark.tables import read_table
from pipelines.ingest_images import ingest_images
from pipelines.ingest_text import ingest_text

data_dir = widget("data_dir", "data")
profile = widget("profile", "local")
image_cfg = notebook_config("ingest_images", [f"paths.data_dir={data_dir}"], profile=profile)
text_cfg = notebook_config("ingest_text", [f"paths.data_dir={data_dir}"], profile=profile)
run_id = new_run(image_cfg)
spark = get_spark(image_cfg)
print(f"run {run_id}: data_dir={data_dir}, images from {image_cfg.ingest_images.input}, text from {text_cfg.ingest_text.input}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Images
# MAGIC Every file listed ends as exactly one of written, duplicate or quarantined; the pipeline raises if not.

# COMMAND ----------

images = ingest_images(spark, image_cfg, run_id)
print(f"images: {images.counts.describe('images')}")
print(f"image quarantine reasons: {images.summary['quarantine_reasons']}")
image_table = resolve_path(data_dir, image_cfg.ingest_images.output)
image_quarantine = resolve_path(data_dir, image_cfg.ingest_images.quarantine)
image_rows = read_table(spark, image_table, fmt=image_cfg.ingest_images.format).df
image_rows.groupBy("split", "label").count().orderBy("split", "label").show(40, truncate=False)

# COMMAND ----------

image_rows.select("path", "label", "label_index", "split", "width", "height").show(5, truncate=60)
if images.counts.quarantined:
    read_table(spark, image_quarantine, fmt=image_cfg.ingest_images.format).df.show(5, truncate=60)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Text
# MAGIC Texts are normalised (URLs and mentions masked) and tokenized with the MiniLM tokenizer.

# COMMAND ----------

texts = ingest_text(spark, text_cfg, run_id)
print(f"texts: {texts.counts.describe('texts')}")
print(f"text quarantine reasons: {texts.summary['quarantine_reasons']}")
text_table = resolve_path(data_dir, text_cfg.ingest_text.output)
text_quarantine = resolve_path(data_dir, text_cfg.ingest_text.quarantine)
text_rows = read_table(spark, text_table, fmt=text_cfg.ingest_text.format).df
text_rows.select("text_norm", "label", "split", "num_tokens").show(5, truncate=60)
if texts.counts.quarantined:
    read_table(spark, text_quarantine, fmt=text_cfg.ingest_text.format).df.show(5, truncate=60)
