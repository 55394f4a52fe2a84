# Databricks notebook source
# MAGIC %md
# MAGIC # 03 Batch and streaming inference
# MAGIC
# MAGIC **Batch:** `pipelines.batch_inference.score_table` (what `jobs/batch_inference.py` runs) scores the image
# MAGIC table's test split with the registered image model's `champion` and appends the predictions table;
# MAGIC rerunning on the same table version and model is a no-op.
# MAGIC
# MAGIC **Streaming:** replays labelled messages as JSON-line files into `stream.input`
# MAGIC (`dlspark.datasets.replay`, as `jobs/replay_tweets.py` does), then runs `pipelines.stream_sentiment`
# MAGIC once over what is there (available-now trigger) with the sentiment model's `champion` (train it in 02
# MAGIC with `train_sentiment=true`, or `jobs/train.py --pipeline sentiment`).
# MAGIC
# MAGIC Parameters: `data_dir` (default `data`), `profile` (`local`), `stream` (default `true`),
# MAGIC `replay_source` (`tweets`: the demo's tweets CSV; `synthetic`: generated short texts),
# MAGIC `replay_messages` (default `200`), `set` (extra `key=value` overrides separated by `;`).

# COMMAND ----------

from datetime import datetime, timezone
from pathlib import Path

from dlspark.datasets.replay import ReplaySpec, replay, synthetic_messages, tweet_messages
from dlspark.datasets.tweets import tweets_csv_path
from dlspark.notebook import flag, get_spark, integer, new_run, notebook_config, widget
from dlspark.paths import resolve_path
from dlspark.tables import read_table
from pipelines.batch_inference import score_table
from pipelines.stream_sentiment import RunMode, stream_sentiment

data_dir = widget("data_dir", "data")
profile = widget("profile", "local")
run_stream = flag("stream", True)
replay_source = widget("replay_source", "tweets")
replay_messages = integer("replay_messages", 200)
batch_cfg = notebook_config("image_classification", [f"paths.data_dir={data_dir}", "inference.split=test"], profile=profile)
run_id = new_run(batch_cfg)
spark = get_spark(batch_cfg)
print(f"run {run_id}: data_dir={data_dir}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Batch scoring of the test split

# COMMAND ----------

scoring = score_table(spark, batch_cfg, run_id)
print(f"batch: {scoring.describe()}")
print(f"batch accuracy: {scoring.accuracy} on {scoring.labelled} labelled rows (training test_accuracy "
      f"{scoring.train_test_accuracy})")
predictions = read_table(spark, scoring.output, fmt=batch_cfg.inference.format).df
predictions.where(predictions.scoring_key == scoring.scoring_key).select(
    "label", "prediction", "probability", "split").show(5, truncate=False)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Streaming sentiment over replayed messages

# COMMAND ----------

if run_stream:
    stream_cfg = notebook_config("sentiment", [f"paths.data_dir={data_dir}"], profile=profile)
    now = datetime.now(timezone.utc)
    if replay_source == "tweets":
        messages = tweet_messages(tweets_csv_path(), start=now, spacing_s=0.5, limit=replay_messages)
    elif replay_source == "synthetic":
        messages = synthetic_messages(replay_messages, start=now, spacing_s=0.5)
    else:
        raise ValueError(f"replay_source={replay_source!r}: use tweets or synthetic")
    landing = Path(resolve_path(data_dir, stream_cfg.stream.input))
    replayed = replay(messages, landing, ReplaySpec(rate=100, prefix=f"replay-{run_id}"), pace=False)
    print(f"replayed {replayed.lines} messages in {len(replayed.files)} files into {landing}")
    stream = stream_sentiment(spark, stream_cfg, run_id, RunMode(available_now=True))
    print(f"stream: {stream.describe()}")
    print(f"stream reconciled: {stream.reconciled}")
    read_table(spark, resolve_path(data_dir, stream_cfg.stream.output), fmt=stream_cfg.stream.format).df.select(
        "id", "text", "label", "prediction").show(5, truncate=50)
else:
    print("stream=false: streaming section not run")
