"""HTML drift report: a metrics table plus matplotlib plots (baseline vs current histograms, class-share bars).

Pure code (matplotlib with the Agg backend, no Spark). Plots are embedded as base64 PNGs so the report is
one self-contained file.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Mapping, Sequence

import numpy as np

from dlspark.monitoring.drift import Metric, class_shares
from dlspark.monitoring.slices import SliceVerdict


def histogram_png(feature: str, baseline: np.ndarray, current: np.ndarray, bins: int = 30) -> bytes:
    """Overlaid density histograms of one feature on shared bins; PNG bytes."""
    b, c = baseline[np.isfinite(baseline)], current[np.isfinite(current)]
    both = np.concatenate([b, c])
    edges = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, bins + 1)
    fig, ax = _figure()
    ax.hist(b, bins=edges, density=True, alpha=0.5, label=f"baseline (n={b.size})")
    ax.hist(c, bins=edges, density=True, alpha=0.5, label=f"current (n={c.size})")
    ax.set_title(feature)
    ax.legend()
    return _png(fig)


def class_share_png(baseline: Mapping[str, int], current: Mapping[str, int], classes: Sequence[str]) -> bytes:
    """Side-by-side bars of the predicted-class shares; PNG bytes."""
    x = np.arange(len(classes))
    fig, ax = _figure(width=max(6.0, 0.6 * len(classes)))
    ax.bar(x - 0.2, class_shares(baseline, classes), 0.4, label="baseline")
    ax.bar(x + 0.2, class_shares(current, classes), 0.4, label="current")
    ax.set_xticks(x, list(classes), rotation=45, ha="right")
    ax.set_ylabel("share of predictions")
    ax.set_title("predicted class shares")
    ax.legend()
    return _png(fig)


def render_html(title: str, facts: Mapping[str, object], metrics: Sequence[Metric], plots: Mapping[str, bytes],
                sections: Mapping[str, str] | None = None) -> str:
    """The report page: facts (tables, model, rows), the metrics table (drifted rows highlighted), ``sections``
    (title -> HTML made here, e.g. :func:`slices_html`), the plots."""
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    head = "".join(f"<th>{h}</th>" for h in ("metric", "baseline", "current", "value", "threshold", "judged", "drifted"))
    body = "".join(_metric_row(m) for m in metrics)
    extra = "".join(f"<h2>{html.escape(name)}</h2>{part}" for name, part in (sections or {}).items())
    images = "".join(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}'/>" for name, png in plots.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:2px 8px;text-align:left}tr.drift{background:#fdd}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{fact_rows}</table><h2>Metrics</h2><table><tr>{head}</tr>{body}</table>"
            f"{extra}<h2>Distributions</h2>{images}</body></html>")


def slices_html(verdicts: Sequence[SliceVerdict]) -> str:
    """One row per slice value (the whole table first), flagged ones highlighted with their reasons."""
    head = "".join(f"<th>{h}</th>" for h in ("slice", "value", "rows", "labelled", "accuracy", "positive rate",
                                             "mean confidence", "ECE", "accuracy ratio", "positive-rate ratio", "judged",
                                             "flagged because"))
    rows = []
    for v in verdicts:
        cells = [v.slice, v.value, str(v.rows), str(v.labelled), _fmt(v.accuracy), _fmt(v.positive_rate),
                 _fmt(v.mean_confidence), _fmt(v.ece), _fmt(v.accuracy_ratio), _fmt(v.positive_rate_ratio),
                 "yes" if v.judged else "no", "; ".join(v.reasons)]
        cls = " class='drift'" if v.flagged else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _metric_row(m: Metric) -> str:
    cells = [m.metric, _fmt(m.baseline_value), _fmt(m.current_value), _fmt(m.value), _fmt(m.threshold),
             "yes" if m.judged else "no", "DRIFT" if m.drifted else ""]
    cls = " class='drift'" if m.drifted else ""
    return f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _figure(width: float = 6.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, 3.5))


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
