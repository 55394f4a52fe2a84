"""notebooks/: parameters and Databricks-source conversion (pure), and every notebook executed end to end in a
Jupyter kernel (via :func:`dlspark.notebook.to_notebook` + nbclient) on tiny generated landing data."""
from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlspark.config import ConfigError
from dlspark.notebook import convert, flag, get_spark, integer, notebook_config, overrides, split_cells, to_notebook, widget
from tests.conftest import REPO
from tests.stacks import child_connect

NOTEBOOKS = ("01_ingest", "02_train_and_track", "03_batch_and_streaming_inference", "04_export_serve_monitor")
SOURCE = """# Databricks notebook source
# MAGIC %md
# MAGIC # Title
# MAGIC text

# COMMAND ----------

x = 1
# a comment, not a separator

# COMMAND ----------

# MAGIC %pip install something

# COMMAND ----------


# COMMAND ----------

print(x)
"""


# ---- parameters (pure) ------------------------------------------------------------------------------------------

class FakeWidgets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.created = values, {}

    def text(self, name: str, default: str, label: str) -> None:
        self.created[name] = (default, label)
        self.values.setdefault(name, default)

    def get(self, name: str) -> str:
        return self.values[name]


def test_widget_reads_dbutils_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("DLSPARK_NB_DATA_DIR", raising=False)
    assert widget("data_dir", "data") == "data"
    monkeypatch.setenv("DLSPARK_NB_DATA_DIR", "/tmp/from-env")
    assert widget("data_dir", "data") == "/tmp/from-env"
    dbutils = SimpleNamespace(widgets=FakeWidgets({"data_dir": "dbfs:/from-widget"}))
    assert widget("data_dir", "data", label="Data folder", dbutils=dbutils) == "dbfs:/from-widget"
    assert dbutils.widgets.created == {"data_dir": ("data", "Data folder")}
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        widget("data-dir", "x")


def test_flag_integer_and_overrides_parse_or_say_what_is_wrong(monkeypatch):
    monkeypatch.setenv("DLSPARK_NB_STREAM", "No")
    assert flag("stream", True) is False
    monkeypatch.setenv("DLSPARK_NB_STREAM", "maybe")
    with pytest.raises(ValueError, match="DLSPARK_NB_STREAM"):
        flag("stream", True)
    monkeypatch.setenv("DLSPARK_NB_REPLAY_MESSAGES", " 40 ")
    assert integer("replay_messages", 200) == 40
    monkeypatch.setenv("DLSPARK_NB_REPLAY_MESSAGES", "forty")
    with pytest.raises(ValueError, match="whole number"):
        integer("replay_messages", 200)
    monkeypatch.setenv("DLSPARK_NB_SET", "train.epochs=2; ingest_images.size=[28, 28]\nspark.master=local[1];")
    assert overrides() == ["train.epochs=2", "ingest_images.size=[28, 28]", "spark.master=local[1]"]


def test_notebook_config_applies_pipeline_sets_then_the_set_parameter(monkeypatch):
    monkeypatch.setenv("DLSPARK_NB_SET", "train.epochs=3")
    cfg = notebook_config("image_classification", ["paths.data_dir=/tmp/x", "train.epochs=1"])
    assert (cfg.paths.data_dir, cfg.train.epochs, cfg.mlflow.registered_model) == ("/tmp/x", 3, "dlspark-fashion-mnist")
    monkeypatch.setenv("DLSPARK_NB_SET", "train.no_such_key=1")
    with pytest.raises(ConfigError, match="no_such_key"):
        notebook_config("image_classification")


def test_get_spark_reuses_the_active_session(spark, caplog):
    cfg = notebook_config(None, ["spark.master=local[1]"])
    assert get_spark(cfg).sparkContext is spark.sparkContext            # Databricks' `spark`: not a second session
    assert spark.sparkContext.master == "local[2]" and "not applied" in caplog.text


# ---- Databricks source -> Jupyter (pure) ---------------------------------------------------------------------------

def test_split_cells_kinds_and_magic_prefixes():
    assert split_cells(SOURCE) == [
        ("markdown", "# Title\ntext"),
        ("code", "x = 1\n# a comment, not a separator"),
        ("raw", "%pip install something"),
        ("code", "print(x)"),
    ]
    with pytest.raises(ValueError, match="Databricks notebook source"):
        split_cells("x = 1\n")


def test_convert_writes_a_valid_notebook(tmp_path):
    import nbformat

    src = tmp_path / "n.py"
    src.write_text(SOURCE)
    nb = nbformat.read(str(convert(src, tmp_path / "out" / "n.ipynb")), as_version=4)
    nbformat.validate(nb)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "raw", "code"]
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_repo_notebooks_are_thin_databricks_sources(name):
    source = (REPO / "notebooks" / f"{name}.py").read_text()
    cells = split_cells(source)
    assert cells[0][0] == "markdown" and sum(kind == "code" for kind, _ in cells) >= 3
    code = "\n".join(text for kind, text in cells if kind == "code")
    assert "from pipelines." in code or "from dlspark." in code
    assert not re.search(r"^\s*(from|import) (tests|jobs)\b", code, re.M), "notebooks call lib/ and pipelines/ only"
    assert "widget(" in code and "notebook_config(" in code


# ---- every notebook, end to end (slow) ------------------------------------------------------------------------------

def _execute(name: str) -> str:
    from nbclient import NotebookClient

    nb = to_notebook((REPO / "notebooks" / f"{name}.py").read_text())
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(REPO)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def _line(text: str, prefix: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{text[-3000:]}"
    return found[-1]


@pytest.mark.slow
@pytest.mark.connect
def test_notebooks_run_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from tests.notebook_data import write_landing

    data = tmp_path / "data"
    landing = write_landing(data, n_per_class=20, n_texts=100)
    env = dict(os.environ)
    connect_sets = child_connect(env)  # over Spark Connect when DLSPARK_TEST_REMOTE is set
    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name)
    for name in set(env) - set(os.environ):
        monkeypatch.setenv(name, env[name])
    sets = ["spark.master=local[2]", "spark.driver_memory=1g", "spark.shuffle_partitions=2", "spark.ui_enabled=false",
            "train.lr=0.01", "train.warmup_epochs=0", "train.feed.batch_size=16", "train.sentiment.finetune_epochs=0",
            "monitor.min_rows=5", *connect_sets]
    for key, value in {"DATA_DIR": str(data), "EPOCHS": "3", "TRAIN_SENTIMENT": "true", "REPLAY_SOURCE": "synthetic",
                       "REPLAY_MESSAGES": "40", "SET": "; ".join(sets)}.items():
        monkeypatch.setenv(f"DLSPARK_NB_{key}", value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    out = _execute("01_ingest")
    good_images, good_texts = landing["images"] - 1, landing["texts"] - 1
    assert _line(out, "images: ").endswith(f"{landing['images']} seen = {good_images} written + 0 duplicates + 1 quarantined")
    assert _line(out, "texts: ").endswith(f"{landing['texts']} seen = {good_texts} written + 0 duplicates + 1 quarantined")
    assert _line(out, "image quarantine reasons") == "image quarantine reasons: {'corrupt': 1}"
    images = pq.read_table(data / "tables" / "images", columns=["split"]).column("split").to_pylist()
    assert len(images) == good_images and images.count("test") > 0

    out = _execute("02_train_and_track")
    assert "registered dlspark-fashion-mnist version 1" in out and "registered dlspark-sentiment version 1" in out
    assert re.search(r"version 1: aliases \[.*'champion'.*\], val_accuracy=", out)
    assert "mlflow run" in out and "'test_accuracy':" in out

    out = _execute("03_batch_and_streaming_inference")
    n_test = images.count("test")
    assert f"rows {n_test} = {n_test} predicted + 0 errors" in _line(out, "batch: ")
    batch_acc, train_acc = re.fullmatch(rf"batch accuracy: (\S+) on {n_test} labelled rows \(training test_accuracy (\S+)\)",
                                        _line(out, "batch accuracy: ")).groups()
    assert float(batch_acc) == pytest.approx(float(train_acc))   # the same test rows, scored by Spark and by training
    assert pq.read_table(data / "tables" / "predictions" / "dlspark-fashion-mnist").num_rows == n_test
    assert "sinks hold 40 predicted + 0 quarantined of 40 lines (reconciled)" in _line(out, "stream: ")
    assert _line(out, "stream reconciled") == "stream reconciled: True"

    out = _execute("04_export_serve_monitor")
    assert "argmax agreement 1.000" in _line(out, "onnx export: models:/dlspark-fashion-mnist-onnx/1")
    assert "-> HTTP 200 {'model': 'dlspark-fashion-mnist-onnx'" in _line(out, "serving models:/dlspark-fashion-mnist-onnx/1")
    assert 'dlspark_serve_requests_total{status="200"} 1.0' in out
    served, p_served, batch, p_batch = re.fullmatch(
        r"same image: served \(ONNX\) (\S+) p=(\S+); batch scoring in 03 \(torch\) (\S+) p=(\S+)",
        _line(out, "same image: ")).groups()
    assert served == batch and float(p_served) == pytest.approx(float(p_batch), abs=2e-4)   # export + serving = batch
    report = Path(_line(out, "HTML report: ").removeprefix("HTML report: "))
    assert report.is_file() and report.is_relative_to(data) and "<html" in report.read_text().lower()
    assert _line(out, "drift flags: ") == "drift flags: []"            # current = the baseline's rows: no drift
    assert re.search(r"psi/probability +value=0\.0 .* ok$", out, re.M)      # judged (monitor.min_rows=5), not skipped
