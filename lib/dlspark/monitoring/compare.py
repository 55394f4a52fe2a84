"""Baseline vs current: the samples collected from each side, compared into metric rows. Pure code."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from dlspark.monitoring.drift import Metric, Thresholds, compare_classes, compare_distribution, info_metric

PROBABILITY = "probability"
CLASS_PREFIX = "probability:"   # per-class probability features are named probability:<class>


@dataclass(frozen=True)
class Sample:
    """What one side contributes: per-row numeric features, predicted-class counts, accuracy on labels."""

    rows: int                                   # rows read (scored + errors)
    features: Mapping[str, np.ndarray] = field(hash=False)   # name -> values of scored rows (NaN = missing)
    class_counts: Mapping[str, int] = field(hash=False)
    accuracy: float | None = None
    labelled: int = 0


def compare_samples(baseline: Sample, current: Sample, classes: Sequence[str], t: Thresholds) -> list[Metric]:
    """All metric rows: row counts, accuracy, class-share PSI, then PSI/KS of every feature both sides have.

    Per-class probabilities get PSI only (the KS test is kept to the max probability and the input
    statistics, so a run does not fire on one of many tests by chance).
    """
    out = [info_metric("rows", float(baseline.rows), float(current.rows)),
           info_metric("accuracy", baseline.accuracy, current.accuracy)]
    out += compare_classes(baseline.class_counts, current.class_counts, classes, t)
    for name in shared_features(baseline, current):
        out += compare_distribution(name, baseline.features[name], current.features[name], t,
                                    with_ks=not name.startswith(CLASS_PREFIX))
    return out


def shared_features(baseline: Sample, current: Sample) -> list[str]:
    """Feature names present on both sides, in the baseline's order."""
    return [name for name in baseline.features if name in current.features]


def drifted(metrics: Sequence[Metric]) -> list[Metric]:
    """The metrics that passed their threshold."""
    return [m for m in metrics if m.drifted]


def per_class_probabilities(probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """``(n, k)`` class probabilities -> ``{"probability:<class>": (n,)}``; a wrong width is an error."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError(f"probabilities have shape {probabilities.shape} but the model has {len(classes)} classes "
                         f"{list(classes)}; is the table scored by this model?")
    return {f"{CLASS_PREFIX}{c}": probabilities[:, i] for i, c in enumerate(classes)}
