"""Drift statistics on samples collected to the driver. Pure code: numpy + scipy, no Spark.

PSI (population stability index) compares binned shares: ``sum((c - b) * ln(c / b))`` over bins whose
edges are the baseline's quantiles (so each bin holds ~1/bins of the baseline), with shares floored at
``eps`` so an empty bin does not give an infinite value. Rules of thumb: < 0.1 stable, 0.1-0.25 moderate,
> 0.25 shifted. The two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) gives a p-value for
"both samples come from the same distribution"; a small p-value is drift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

EPS = 1e-4


@dataclass(frozen=True)
class Thresholds:
    """When a metric counts as drift; ``min_rows``: smaller samples are reported but not judged."""

    psi: float = 0.2
    ks_pvalue: float = 0.01
    min_rows: int = 100
    bins: int = 10

    def __post_init__(self) -> None:
        if self.psi <= 0 or not 0 < self.ks_pvalue < 1 or self.min_rows < 1 or self.bins < 2:
            raise ValueError(f"thresholds need psi > 0, 0 < ks_pvalue < 1, min_rows >= 1, bins >= 2; got {self}")


@dataclass(frozen=True)
class Metric:
    """One row of the metrics table."""

    metric: str                 # <statistic>/<feature>, e.g. psi/probability
    statistic: str              # psi | ks_pvalue | share | accuracy | rows
    feature: str                # probability | brightness | class_share | class:<name> ...
    value: float | None
    baseline_value: float | None    # baseline summary: mean of the distribution, share, accuracy, rows
    current_value: float | None
    threshold: float | None
    drifted: bool
    judged: bool                # False when a side has fewer than min_rows rows (or no value)


def quantile_edges(baseline: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges at the baseline's quantiles, open at both ends.

    Tied quantiles (a point mass, e.g. most unknown-token rates are 0) are merged, and the atom gets a bin
    of its own (an edge just above it), so mass moving off the atom still shows.

    Parameters
    ----------
    baseline
        1-d sample, NaNs already removed.
    bins
        Wanted number of bins (>= 2).

    Returns
    -------
    numpy.ndarray
        Increasing edges starting at ``-inf`` and ending at ``+inf``.
    """
    if baseline.size == 0:
        raise ValueError("quantile_edges: the baseline sample is empty; a PSI needs baseline rows")
    values, counts = np.unique(np.quantile(baseline, np.linspace(0, 1, bins + 1)[1:-1]), return_counts=True)
    inner = np.unique(np.concatenate([values, np.nextafter(values[counts > 1], np.inf)]))
    return np.concatenate([[-np.inf], inner, [np.inf]])


def binned_shares(sample: np.ndarray, edges: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Share of ``sample`` in each ``[edge_i, edge_i+1)`` bin, floored at ``eps`` and renormalised."""
    counts = np.histogram(sample, bins=edges)[0] if sample.size else np.zeros(len(edges) - 1)
    return floor_shares(counts, eps)


def floor_shares(counts: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Counts -> shares with every share at least ``eps`` (renormalised to sum to 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    shares = counts / total if total > 0 else np.full(counts.shape, 1.0 / max(len(counts), 1))
    shares = np.maximum(shares, eps)
    return shares / shares.sum()


def psi_from_shares(baseline: np.ndarray, current: np.ndarray) -> float:
    """``sum((current - baseline) * ln(current / baseline))``; both arrays are strictly positive shares."""
    if baseline.shape != current.shape:
        raise ValueError(f"psi: share vectors differ in length ({baseline.shape} vs {current.shape})")
    return float(np.sum((current - baseline) * np.log(current / baseline)))


def psi(baseline: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = EPS) -> float:
    """PSI of ``current`` against ``baseline`` over ``bins`` quantile bins of the baseline."""
    b, c = _clean(baseline), _clean(current)
    edges = quantile_edges(b, bins)
    return psi_from_shares(binned_shares(b, edges, eps), binned_shares(c, edges, eps))


def ks_pvalue(baseline: np.ndarray, current: np.ndarray) -> float:
    """Two-sample KS test p-value (``scipy.stats.ks_2samp``, two-sided); NaNs dropped."""
    b, c = _clean(baseline), _clean(current)
    if b.size == 0 or c.size == 0:
        raise ValueError(f"ks_pvalue: both samples need values, got {b.size} baseline and {c.size} current")
    method = "asymp" if min(b.size, c.size) > 1000 else "auto"   # the exact method gives up on large samples
    return float(stats.ks_2samp(b, c, method=method).pvalue)


def class_shares(counts: Mapping[str, int], classes: Sequence[str]) -> np.ndarray:
    """Raw shares of ``classes`` (in that order) among the counted predictions; classes not counted get 0."""
    values = np.array([counts.get(c, 0) for c in classes], dtype=np.float64)
    total = values.sum()
    return values / total if total else values


def compare_distribution(feature: str, baseline: np.ndarray, current: np.ndarray, t: Thresholds,
                         *, with_ks: bool = True) -> list[Metric]:
    """PSI (and KS) metrics of one continuous feature; not judged when a side has < ``t.min_rows`` values."""
    b, c = _clean(baseline), _clean(current)
    judged = min(b.size, c.size) >= t.min_rows
    if b.size == 0 or c.size == 0:
        return [_metric("psi", feature, None, b, c, t.psi, False, False)]
    value = psi(b, c, t.bins)
    out = [_metric("psi", feature, value, b, c, t.psi, judged and value > t.psi, judged)]
    if with_ks:
        p = ks_pvalue(b, c)
        out.append(_metric("ks_pvalue", feature, p, b, c, t.ks_pvalue, judged and p < t.ks_pvalue, judged))
    return out


def compare_classes(baseline: Mapping[str, int], current: Mapping[str, int], classes: Sequence[str],
                    t: Thresholds) -> list[Metric]:
    """PSI over the predicted-class shares, plus one (unjudged) ``share`` row per class."""
    nb, nc = sum(baseline.get(c, 0) for c in classes), sum(current.get(c, 0) for c in classes)
    judged = min(nb, nc) >= t.min_rows
    sb, sc = class_shares(baseline, classes), class_shares(current, classes)
    value = psi_from_shares(floor_shares(sb * nb), floor_shares(sc * nc)) if nb and nc else None
    drifted = judged and value is not None and value > t.psi
    rows = [Metric("psi/class_share", "psi", "class_share", value, None, None, t.psi, drifted, judged and value is not None)]
    rows += [Metric(f"share/{c}", "share", f"class:{c}", float(sc[i] - sb[i]), float(sb[i]), float(sc[i]), None, False, False)
             for i, c in enumerate(classes)]
    return rows


def info_metric(statistic: str, baseline: float | None, current: float | None) -> Metric:
    """A reported, unjudged metric (row counts, accuracy); ``value`` = current - baseline where both exist."""
    value = current - baseline if current is not None and baseline is not None else None
    return Metric(statistic, statistic, statistic, value, baseline, current, None, False, False)


def _metric(statistic: str, feature: str, value: float | None, b: np.ndarray, c: np.ndarray, threshold: float,
            drifted: bool, judged: bool) -> Metric:
    mean = lambda x: float(x.mean()) if x.size else None  # noqa: E731
    return Metric(f"{statistic}/{feature}", statistic, feature, value, mean(b), mean(c), threshold, bool(drifted), judged)


def _clean(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]
