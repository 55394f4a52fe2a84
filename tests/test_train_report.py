"""The training report (pure): metrics, calibration, confident mistakes, and the files it writes."""
from __future__ import annotations

import numpy as np
import pytest

from dlspark.train.report import SplitPredictions, calibration, confident_mistakes, per_class, write_report

LABELS = ("cat", "dog", "fox")


def _pred(examples=None) -> SplitPredictions:
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.05, 0.9, 0.05],
                      [0.4, 0.35, 0.25]], np.float32)
    y = np.array([0, 1, 1, 2, 2, 0])                 # rows 2 (p 0.6) and 4 (p 0.9) are wrong
    return SplitPredictions(probs, y, LABELS, examples or {})


def test_per_class_precision_recall_f1_and_support():
    got = {c.label: c for c in per_class(_pred())}
    assert got["cat"].precision == pytest.approx(2 / 3) and got["cat"].recall == 1.0 and got["cat"].support == 2
    assert got["dog"].precision == 0.5 and got["dog"].recall == 0.5
    assert got["fox"].precision == 1.0 and got["fox"].recall == 0.5
    assert got["fox"].f1 == pytest.approx(2 / 3)


def test_calibration_bins_and_expected_calibration_error():
    bins, ece = calibration(_pred())
    by_low = {round(b["low"], 1): b for b in bins}
    assert sum(b["rows"] for b in bins) == 6
    assert by_low[0.9]["accuracy"] == 0.5 and by_low[0.9]["confidence"] == pytest.approx(0.9)   # rows 0 and 4
    manual = (2 * abs(0.9 - 0.5) + 1 * abs(0.7 - 1) + 1 * abs(0.6 - 0) + 1 * abs(0.8 - 1) + 1 * abs(0.4 - 1)) / 6
    assert ece == pytest.approx(manual, rel=1e-5)
    perfect = SplitPredictions(np.array([[1.0, 0.0, 0.0]] * 4, np.float32), np.zeros(4, int), LABELS)
    assert calibration(perfect)[1] == pytest.approx(0.0)


def test_the_most_confident_mistakes_come_first():
    assert confident_mistakes(_pred()).tolist() == [4, 2]
    assert confident_mistakes(_pred(), k=1).tolist() == [4]


def test_report_files_for_images_and_texts(tmp_path):
    history = [{"epoch": e, "phase": "train", "train_loss": 1 / (e + 1), "train_accuracy": 0.5 + e / 10, "val_loss": 1.0,
                "val_accuracy": 0.6, "lr": 0.001, "seconds": 3.0} for e in range(3)]
    images = {4: np.zeros((8, 8, 1), np.uint8), 2: np.full((8, 8, 1), 200, np.uint8)}
    page = write_report(tmp_path / "img", "run a", history, _pred(images), {"run": "a"})
    assert {p.name for p in (tmp_path / "img").iterdir()} == {"curves.png", "confusion.png", "calibration.png",
                                                                "mistakes.png", "report.html"}
    text = page.read_text()
    assert "The 2 most confident mistakes" in text and "<td>fox</td><td>1.0000</td><td>0.5000</td>" in text
    texts = {4: "what a <b>day</b>", 2: "meh"}
    page = write_report(tmp_path / "txt", "run b", history, _pred(texts), {"run": "b"})
    assert not (tmp_path / "txt" / "mistakes.png").exists()
    assert "what a &lt;b&gt;day&lt;/b&gt;</td><td>fox</td><td>dog</td><td>0.900</td>" in page.read_text()


def test_predictions_that_do_not_fit_the_labels_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        SplitPredictions(np.zeros((3, 2), np.float32), np.zeros(3, int), LABELS)
