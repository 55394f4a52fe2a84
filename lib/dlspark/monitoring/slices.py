"""Slice and bias metrics of a scoring table, from per-(slice, value, confidence bin) aggregates. Pure code.

Spark does the counting (``dlspark.monitoring.slice_frame``: one job over the whole table, whatever its size);
this module turns the small aggregate into, per slice value: rows, accuracy (labelled rows), positive rate,
mean confidence and expected calibration error (ECE over ``CONFIDENCE_BINS`` equal-width bins of the top-class
probability), then judges each value against the whole table:

- accuracy ratio = slice accuracy / overall accuracy, flagged below ``min_accuracy_ratio``;
- positive-rate ratio = slice positive rate / overall positive rate, flagged outside
  ``[min_rate_ratio, 1 / min_rate_ratio]`` (the four-fifths rule of disparate impact at 0.8); not judged for the
  outcome slices ``label`` and ``prediction`` (their positive rates differ by definition: that is per-class recall);
- ECE, flagged when it exceeds the whole table's by more than ``max_ece_increase`` (a model badly calibrated
  everywhere is one finding, not one per slice).

A value with fewer than ``min_rows`` rows (``min_labelled`` labelled rows for accuracy and ECE) is reported but
never judged, so a handful of rows cannot raise an alarm.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

from dlspark.monitoring.drift import Metric

CONFIDENCE_BINS = 10
OVERALL = ("all", "all")          # the (slice, value) pair of the whole table in the aggregate
MAX_VALUES_PER_SLICE = 1000       # values beyond the most frequent ones are dropped from the report (and logged)
OUTCOME_SLICES = ("label", "prediction")   # slices by the outcome itself: no positive-rate rule


@dataclass(frozen=True)
class SliceRules:
    """When a slice value is flagged (see the module docstring)."""

    min_rows: int = 50
    min_labelled: int = 30
    min_accuracy_ratio: float = 0.9
    min_rate_ratio: float = 0.8
    max_ece_increase: float = 0.1

    def __post_init__(self) -> None:
        if self.min_rows < 1 or self.min_labelled < 1:
            raise ValueError(f"min_rows and min_labelled must be >= 1, got {self.min_rows}, {self.min_labelled}")
        if not 0 < self.min_accuracy_ratio <= 1 or not 0 < self.min_rate_ratio <= 1:
            raise ValueError("min_accuracy_ratio and min_rate_ratio must be in (0, 1]")
        if not 0 < self.max_ece_increase <= 1:
            raise ValueError(f"max_ece_increase must be in (0, 1], got {self.max_ece_increase}")


@dataclass(frozen=True)
class BinCounts:
    """One row of the Spark aggregate: a (slice, value, confidence bin) cell."""

    slice: str
    value: str
    bin: int
    rows: int                 # scored rows
    positive: int             # rows predicted as the positive class
    confidence: float         # summed top-class probability of the scored rows
    labelled: int             # rows whose label is a class of the model
    correct: int              # labelled rows predicted right
    labelled_confidence: float   # summed top-class probability of the labelled rows


@dataclass(frozen=True)
class SliceStats:
    """One slice value's statistics (the whole table's too)."""

    slice: str
    value: str
    rows: int
    labelled: int
    accuracy: float | None
    positive_rate: float | None
    mean_confidence: float | None
    ece: float | None


@dataclass(frozen=True)
class SliceVerdict(SliceStats):
    """A slice value's statistics, its ratios to the whole table, and why it is flagged (if it is)."""

    accuracy_ratio: float | None
    positive_rate_ratio: float | None
    judged: bool
    reasons: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)


def judge_slices(cells: Iterable[BinCounts], rules: SliceRules, has_positive: bool) -> list[SliceVerdict]:
    """Per-value verdicts (the whole table first, then slices by name and falling row count)."""
    merged: dict[tuple[str, str], list[BinCounts]] = {}
    for c in cells:
        merged.setdefault((c.slice, c.value), []).append(c)
    if OVERALL not in merged:
        raise ValueError("the aggregate has no overall row ('all', 'all'); build it with slice_frame.aggregate_slices")
    overall = _stats(OVERALL, merged.pop(OVERALL), has_positive)
    out = [_verdict(overall, overall, rules)]
    for name in sorted({s for s, _ in merged}):
        values = sorted((_stats(k, v, has_positive) for k, v in merged.items() if k[0] == name), key=lambda s: -s.rows)
        out += [_verdict(s, overall, rules) for s in values[:MAX_VALUES_PER_SLICE]]
    return out


def dropped_values(cells: Sequence[BinCounts]) -> dict[str, int]:
    """Slices with more than ``MAX_VALUES_PER_SLICE`` values: how many values the report leaves out."""
    counts: dict[str, set[str]] = {}
    for c in cells:
        counts.setdefault(c.slice, set()).add(c.value)
    return {k: len(v) - MAX_VALUES_PER_SLICE for k, v in counts.items() if len(v) > MAX_VALUES_PER_SLICE}


def ece(bins: Sequence[tuple[int, float, int]]) -> float | None:
    """Expected calibration error from ``(labelled rows, summed confidence, correct)`` per confidence bin."""
    n = sum(b[0] for b in bins)
    if n == 0:
        return None
    return sum(abs(conf / rows - correct / rows) * rows for rows, conf, correct in bins if rows) / n


def confidence_bin(probability: float) -> int:
    """The equal-width bin of a top-class probability in [0, 1] (1.0 goes to the last bin)."""
    return min(int(probability * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)


def slice_metrics(verdicts: Sequence[SliceVerdict], rules: SliceRules) -> list[Metric]:
    """Metric rows for the metrics table and the drift report: each judged slice value's ratios and ECE."""
    overall = verdicts[0]
    out = []
    for v in verdicts[1:]:
        feature = f"slice:{v.slice}={v.value}"
        checks = (("accuracy_ratio", v.accuracy_ratio, overall.accuracy, v.accuracy, rules.min_accuracy_ratio, "accuracy"),
                  ("positive_rate_ratio", v.positive_rate_ratio, overall.positive_rate, v.positive_rate,
                   rules.min_rate_ratio, "positive rate"),
                  ("ece_increase", None if v.ece is None or overall.ece is None else v.ece - overall.ece, overall.ece,
                   v.ece, rules.max_ece_increase, "calibration"))
        for statistic, value, base, cur, threshold, reason in checks:
            if value is None:
                continue
            judged = v.judged and not (statistic == "positive_rate_ratio" and v.slice in OUTCOME_SLICES)
            out.append(Metric(metric=f"{statistic}/{feature}", statistic=statistic, feature=feature, value=value,
                              baseline_value=base, current_value=cur, threshold=threshold, judged=judged,
                              drifted=any(r.startswith(reason) for r in v.reasons)))
    return out


def _stats(key: tuple[str, str], cells: Sequence[BinCounts], has_positive: bool) -> SliceStats:
    rows, labelled = sum(c.rows for c in cells), sum(c.labelled for c in cells)
    correct = sum(c.correct for c in cells)
    return SliceStats(
        slice=key[0], value=key[1], rows=rows, labelled=labelled,
        accuracy=correct / labelled if labelled else None,
        positive_rate=sum(c.positive for c in cells) / rows if rows and has_positive else None,
        mean_confidence=sum(c.confidence for c in cells) / rows if rows else None,
        ece=ece([(c.labelled, c.labelled_confidence, c.correct) for c in cells]))


def _verdict(s: SliceStats, overall: SliceStats, rules: SliceRules) -> SliceVerdict:
    acc_ratio = _ratio(s.accuracy, overall.accuracy)
    rate_ratio = _ratio(s.positive_rate, overall.positive_rate)
    judged = s.rows >= rules.min_rows
    labelled_ok = judged and s.labelled >= rules.min_labelled
    reasons = []
    if labelled_ok and acc_ratio is not None and acc_ratio < rules.min_accuracy_ratio:
        reasons.append(f"accuracy {s.accuracy:.3f} is {acc_ratio:.2f}x the overall {overall.accuracy:.3f} "
                       f"(< {rules.min_accuracy_ratio})")
    rate_judged = judged and s.slice not in OUTCOME_SLICES
    if rate_judged and rate_ratio is not None and not rules.min_rate_ratio <= rate_ratio <= 1 / rules.min_rate_ratio:
        reasons.append(f"positive rate {s.positive_rate:.3f} is {rate_ratio:.2f}x the overall {overall.positive_rate:.3f} "
                       f"(outside [{rules.min_rate_ratio}, {1 / rules.min_rate_ratio:.2f}])")
    if labelled_ok and s.ece is not None and overall.ece is not None and s.ece - overall.ece > rules.max_ece_increase:
        reasons.append(f"calibration error {s.ece:.3f} exceeds the overall {overall.ece:.3f} by more than "
                       f"{rules.max_ece_increase}")
    return SliceVerdict(**asdict(s), accuracy_ratio=acc_ratio, positive_rate_ratio=rate_ratio, judged=judged,
                        reasons=tuple(reasons))


def _ratio(value: float | None, whole: float | None) -> float | None:
    if value is None or whole is None or whole == 0 or math.isnan(whole):
        return None
    return value / whole


def verdict_rows(verdicts: Sequence[SliceVerdict]) -> list[Mapping[str, object]]:
    """The verdicts as plain rows (the slices table, the report)."""
    return [{"slice": v.slice, "value": v.value, "rows": v.rows, "labelled": v.labelled, "accuracy": v.accuracy,
             "positive_rate": v.positive_rate, "mean_confidence": v.mean_confidence, "ece": v.ece,
             "accuracy_ratio": v.accuracy_ratio, "positive_rate_ratio": v.positive_rate_ratio, "judged": v.judged,
             "flagged": v.flagged, "reasons": "; ".join(v.reasons)} for v in verdicts]
