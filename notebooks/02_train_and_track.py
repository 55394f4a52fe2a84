# Databricks notebook source
# MAGIC %md
# MAGIC # 02 Train and track
# MAGIC
# MAGIC Trains the image CNN on the table from 01 with `pipelines.train.train_model` (what `jobs/train.py` runs):
# MAGIC every run is tracked in MLflow (params, per-epoch metrics, input table version, the model with its
# MAGIC labels and preprocessing) and registered; the new version becomes `champion` only if it beats the
# MAGIC current champion on `mlflow.promote_metric`.
# MAGIC
# MAGIC Parameters: `data_dir` (default `data`), `profile` (`local`), `epochs` (empty = the pipeline's setting),
# MAGIC `train_sentiment` (default `false`: fine-tuning MiniLM on the 38k tweets takes hours on a CPU),
# MAGIC `set` (extra `key=value` overrides separated by `;`, e.g. `train.limit_rows=256;train.feed.batch_size=16`).

# COMMAND ----------

from dlspark.notebook import flag, get_spark, new_run, notebook_config, widget
from dlspark.tracking import list_versions, resolve_tracking
from pipelines.train import train_model

data_dir = widget("data_dir", "data")
profile = widget("profile", "local")
epochs = widget("epochs", "")
train_sentiment = flag("train_sentiment", False)
sets = [f"paths.data_dir={data_dir}"] + ([f"train.epochs={epochs}"] if epochs.strip() else [])
image_cfg = notebook_config("image_classification", sets, profile=profile)
run_id = new_run(image_cfg)
spark = get_spark(image_cfg)
target = resolve_tracking(image_cfg.mlflow, image_cfg.paths.data_dir)
print(f"run {run_id}: MLflow at {target.tracking_uri}; browse with: {target.ui_command()}")


def show_training(report):
    """Print what a train_model report says, the MLflow run's metrics and the registry versions."""
    s = report.summary
    print(f"{s['task']}: {s['epochs_trained']} epoch(s) on {s['backend']} ({s['feeder']} feeder), best epoch {s['best_epoch']}")
    print(f"test metrics: {s['test_metrics']}")
    run = target.client().get_run(report.mlflow_run_id)
    print(f"mlflow run {report.mlflow_run_id} metrics: {dict(sorted(run.data.metrics.items()))}")
    if report.registration is not None:
        print(f"registered {s['registered_model']} version {s['version']}: {report.registration.reason}")
        for v in list_versions(target, s["registered_model"]):
            print(f"  version {v.version}: aliases {list(v.aliases)}, {v.metric_name}={v.metric_value}")


# COMMAND ----------

# MAGIC %md
# MAGIC ## Image classifier

# COMMAND ----------

image_report = train_model(spark, image_cfg, run_id)
show_training(image_report)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Sentiment classifier (optional)
# MAGIC MiniLM encoder with a classification head, trained on the text table (neutral tweets dropped).
# MAGIC Notebook 03's streaming section scores with this model's champion.

# COMMAND ----------

if train_sentiment:
    sentiment_cfg = notebook_config("sentiment", sets, profile=profile)
    show_training(train_model(spark, sentiment_cfg, run_id))
else:
    print("train_sentiment=false: sentiment model not trained in this run (set the widget or DLSPARK_NB_TRAIN_SENTIMENT=true)")
