"""The scheduled pipeline: one idempotent ingest -> score -> monitor run per date, scoring only new rows."""
from __future__ import annotations

from datetime import date

import pytest

from dlspark.config import load_config
from jobs.scheduled import STEPS
from pipelines.scheduled import run_scheduled
from tests.image_zoo import good_tree, write_tree
from tests.inference_models import register_image_model


@pytest.mark.slow
def test_each_date_runs_once_and_scores_only_new_rows(spark, tmp_path):
    register_image_model(tmp_path)
    cfg = load_config(pipeline=["ingest_images", "image_classification"], overrides=[
        f"paths.data_dir={tmp_path}", "ingest_images.input=landing", "ingest_images.size=[8,8]",
        "ingest_images.color_mode=L", "ingest_images.labels=null", "mlflow.registered_model=test-images",
        "monitor.min_rows=4", "monitor.baseline_split=null"])
    write_tree(tmp_path / "landing", good_tree(3))
    steps = STEPS["image_classification"]
    first = run_scheduled(spark, cfg, "r1", steps=steps, day=date(2026, 11, 20))
    assert (first["skipped"], first["ingest"]["written"], first["scoring"]["rows"]) == (False, 6, 6)
    assert "report" in first["monitor"]

    again = run_scheduled(spark, cfg, "r2", steps=steps, day=date(2026, 11, 20))
    assert again["skipped"] and again["run_id"] == "r1"
    predictions = tmp_path / "tables" / "predictions" / "test-images"
    assert spark.read.parquet(str(predictions)).count() == 6

    write_tree(tmp_path / "landing", good_tree(5))          # 2 new files per class
    second = run_scheduled(spark, cfg, "r3", steps=steps, day=date(2026, 11, 21))
    assert (second["ingest"]["written"], second["scoring"]["rows"]) == (4, 4)
    rows = spark.read.parquet(str(predictions)).select("sha256").collect()
    assert len(rows) == 10 and len({r[0] for r in rows}) == 10   # every image scored exactly once
    assert "report" in second["monitor"]                     # the day's 4 new predictions were checked
