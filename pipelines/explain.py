"""Explanations pipeline: per-row Integrated Gradients attributions of a registered torch model over a table (a
seeded sample or every row), computed on the executors -> an explanations table + an HTML page + an MLflow run.

Input: ``explain.input`` (null: ``inference.input``, else ``train.table``), the ``explain.split`` rows, ``explain.rows``
of them at random (seeded; null = all). The model: ``explain.model`` (null: ``inference.model``, else the registered
model's ``inference.alias``), always its pytorch source (an ONNX runtime has no gradients). The work is
:func:`dlspark.explain.explain_table.explain_table`, which batch inference also runs (``inference.explain``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dlspark.config import AppConfig
from dlspark.explain.explain_table import ExplainReport, explain_table

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def explain(spark: SparkSession, cfg: AppConfig, run_id: str) -> ExplainReport:
    """Explain ``explain.rows`` rows of the input with the model; write the table, the page and an MLflow run."""
    return explain_table(spark, cfg, run_id)
