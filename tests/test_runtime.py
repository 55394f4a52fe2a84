"""Runtime choice (pure): which registered export scores a version, by the speeds measured at export."""
from __future__ import annotations

import pytest

from dlspark.inference.model import ModelRef
from dlspark.inference.runtime import ExportCandidate, RuntimeUnavailable, choose_runtime

SOURCE = ModelRef("models:/m/3", "models:/m@champion", "m", "3", "run")


def export(fmt: str, version: str, rate: float | None = None, source_rate: float | None = None) -> ExportCandidate:
    name = f"m-{fmt}"
    return ExportCandidate(ModelRef(f"models:/{name}/{version}", SOURCE.requested, name, version, "r"), fmt, rate,
                           source_rate)


def test_auto_takes_the_export_with_the_best_measured_speedup():
    choice = choose_runtime("auto", SOURCE, [export("torchscript", "1", 1100, 1000), export("onnx", "2", 2800, 1000)])
    assert (choice.format, choice.export.uri) == ("onnx", "models:/m-onnx/2")
    assert "2.80x" in choice.reason


def test_auto_keeps_the_source_when_every_measured_export_is_slower():
    choice = choose_runtime("auto", SOURCE, [export("onnx", "1", 900, 1000), export("torchscript", "1", 950, 1000)])
    assert (choice.export, choice.format) == (None, "source") and "0.95x" in choice.reason


def test_auto_never_picks_int8_and_ranks_unmeasured_exports_onnx_first():
    fast_int8 = export("onnx-int8", "1", 9000, 1000)
    assert choose_runtime("auto", SOURCE, [fast_int8]).format == "source"
    choice = choose_runtime("auto", SOURCE, [fast_int8, export("torchscript", "4"), export("onnx", "1"), export("onnx", "2")])
    assert choice.export.uri == "models:/m-onnx/2" and "not measured" in choice.reason


def test_a_pinned_runtime_takes_the_newest_export_or_says_how_to_make_one():
    choice = choose_runtime("onnx-int8", SOURCE, [export("onnx-int8", "1"), export("onnx-int8", "3"), export("onnx", "5")])
    assert choice.export.uri == "models:/m-onnx-int8/3"
    with pytest.raises(RuntimeUnavailable, match="export-onnx --int8 --source models:/m/3"):
        choose_runtime("onnx-int8", SOURCE, [export("onnx", "5")])
    assert choose_runtime("source", SOURCE, [export("onnx", "5", 5000, 1)]).export is None
    with pytest.raises(ValueError, match="unknown runtime"):
        choose_runtime("tensorrt", SOURCE, [])
