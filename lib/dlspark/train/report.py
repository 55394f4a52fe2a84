"""The training report: learning curves, confusion matrix, per-class precision / recall / F1, calibration and the most
confident mistakes, as PNGs plus one self-contained HTML page. Pure code (numpy, matplotlib Agg, scikit-learn).

Input is what a run produced: its per-epoch history and the best model's class probabilities on the test split
(:class:`SplitPredictions`). Metrics come from scikit-learn (``precision_recall_fscore_support``,
``confusion_matrix``); calibration is top-label: rows binned by their highest probability, each bin's mean
confidence against its accuracy, and the expected calibration error (ECE) over 10 equal-width bins.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

MISTAKES = 20
BINS = 10


@dataclass(frozen=True)
class SplitPredictions:
    """The best model on one split: ``probs [n, classes]``, true ``y [n]``, and what to show of (at least) the most
    confident mistakes: ``examples`` maps a row index to its image (uint8 ``[H, W, C]``) or its text."""

    probs: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    examples: Mapping[int, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "text" if any(isinstance(v, str) for v in self.examples.values()) else "image"

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or len(self.probs) != len(self.y) or self.probs.shape[1] != len(self.labels):
            raise ValueError(f"probs {self.probs.shape}, y {self.y.shape} and {len(self.labels)} labels do not fit together")


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


def per_class(pred: SplitPredictions) -> list[ClassMetrics]:
    from sklearn.metrics import precision_recall_fscore_support

    classes = list(range(len(pred.labels)))
    p, r, f, s = precision_recall_fscore_support(pred.y, pred.probs.argmax(1), labels=classes, zero_division=0)
    return [ClassMetrics(pred.labels[i], float(p[i]), float(r[i]), float(f[i]), int(s[i])) for i in classes]


def calibration(pred: SplitPredictions, bins: int = BINS) -> tuple[list[dict[str, float]], float]:
    """Per non-empty bin of top-label confidence: mean confidence, accuracy, rows; and the ECE."""
    confidence = pred.probs.max(1)
    right = pred.probs.argmax(1) == pred.y
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            conf, acc = float(confidence[inside].mean()), float(right[inside].mean())
            rows.append({"low": b / bins, "high": (b + 1) / bins, "confidence": conf, "accuracy": acc, "rows": int(inside.sum())})
            ece += inside.mean() * abs(conf - acc)
    return rows, float(ece)


def confident_mistakes(pred: SplitPredictions, k: int = MISTAKES) -> np.ndarray:
    """Indices of the ``k`` wrong rows with the highest predicted probability, most confident first."""
    wrong = np.flatnonzero(pred.probs.argmax(1) != pred.y)
    return wrong[np.argsort(-pred.probs[wrong].max(1), kind="stable")][:k]


def write_report(folder: str | Path, title: str, history: Sequence[Mapping[str, Any]], pred: SplitPredictions,
                 facts: Mapping[str, Any]) -> Path:
    """Write ``curves.png``, ``confusion.png``, ``calibration.png``, ``mistakes.png`` (images) and ``report.html``
    into ``folder``; returns the HTML page's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mistakes = confident_mistakes(pred)
    pngs = {"curves": curves_png(history), "confusion": confusion_png(pred), "calibration": calibration_png(pred)}
    if pred.kind == "image" and len(mistakes):
        pngs["mistakes"] = mistakes_png(pred, mistakes)
    for name, data in pngs.items():
        (folder / f"{name}.png").write_bytes(data)
    page = folder / "report.html"
    page.write_text(render_html(title, history, pred, facts, pngs, mistakes))
    return page


def render_html(title: str, history: Sequence[Mapping[str, Any]], pred: SplitPredictions, facts: Mapping[str, Any],
                pngs: Mapping[str, bytes], mistakes: np.ndarray) -> str:
    classes = per_class(pred)
    bins, ece = calibration(pred)
    accuracy = float((pred.probs.argmax(1) == pred.y).mean()) if len(pred.y) else float("nan")
    fact_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in {**facts, "test rows": len(pred.y),
                        "test accuracy": f"{accuracy:.4f}", "expected calibration error": f"{ece:.4f}"}.items())
    epoch_rows = "".join("<tr>" + "".join(f"<td>{_fmt(h.get(k))}</td>" for k in EPOCH_COLUMNS) + "</tr>" for h in history)
    class_rows = "".join(f"<tr><td>{_e(c.label)}</td><td>{c.precision:.4f}</td><td>{c.recall:.4f}</td><td>{c.f1:.4f}</td>"
                         f"<td>{c.support}</td></tr>" for c in classes)
    bin_rows = "".join(f"<tr><td>{b['low']:.1f}-{b['high']:.1f}</td><td>{b['confidence']:.3f}</td><td>{b['accuracy']:.3f}</td>"
                       f"<td>{b['rows']}</td></tr>" for b in bins)
    img = {k: f'<img alt="{k}" src="data:image/png;base64,{base64.b64encode(v).decode()}">' for k, v in pngs.items()}
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}} img{{max-width:100%}}</style></head><body>
<h1>{_e(title)}</h1><table>{fact_rows}</table>
<h2>Learning curves</h2>{img['curves']}
<table><tr>{''.join(f'<th>{c}</th>' for c in EPOCH_COLUMNS)}</tr>{epoch_rows}</table>
<h2>Per class (test split)</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{class_rows}</table>{img['confusion']}
<h2>Calibration</h2><p>Rows binned by their top probability; ECE {ece:.4f}.</p>{img['calibration']}
<table><tr><th>confidence bin</th><th>mean confidence</th><th>accuracy</th><th>rows</th></tr>{bin_rows}</table>
<h2>The {len(mistakes)} most confident mistakes</h2>{img.get('mistakes', '')}{_mistake_table(pred, mistakes)}
</body></html>
"""


EPOCH_COLUMNS = ("epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def curves_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    fig, axes = _figure(2, width=10)
    epochs = [h["epoch"] for h in history]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split in ("train", "val"):
            ax.plot(epochs, [h.get(f"{split}_{metric}") for h in history], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    return _png(fig)


def confusion_png(pred: SplitPredictions) -> bytes:
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(pred.y, pred.probs.argmax(1), labels=list(range(len(pred.labels))))
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(pred.labels)
    fig, (ax,) = _figure(1, width=max(5, 0.6 * n + 3), height=max(4, 0.6 * n + 2))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), pred.labels, rotation=45, ha="right")
    ax.set_yticks(range(n), pred.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    return _png(fig)


def calibration_png(pred: SplitPredictions) -> bytes:
    bins, ece = calibration(pred)
    fig, (ax,) = _figure(1, width=5, height=5)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=f"model (ECE {ece:.3f})")
    ax.set_xlabel("mean top-label confidence")
    ax.set_ylabel("accuracy")
    ax.legend()
    return _png(fig)


def mistakes_png(pred: SplitPredictions, rows: np.ndarray) -> bytes:
    cols = 5
    fig, axes = _figure(len(rows), cols=cols, width=2.2 * cols, height=2.4 * -(-len(rows) // cols))
    for ax, i in zip(axes, rows):
        image = pred.examples[int(i)]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(f"true {pred.labels[pred.y[i]]}\npred {pred.labels[pred.probs[i].argmax()]} "
                     f"{pred.probs[i].max():.2f}", fontsize=8)
        ax.axis("off")
    return _png(fig)


def _mistake_table(pred: SplitPredictions, rows: np.ndarray) -> str:
    if pred.kind != "text":
        return ""
    body = "".join(f"<tr><td>{_e(pred.examples[int(i)])}</td><td>{_e(pred.labels[pred.y[i]])}</td>"
                   f"<td>{_e(pred.labels[pred.probs[i].argmax()])}</td><td>{pred.probs[i].max():.3f}</td></tr>" for i in rows)
    return f"<table><tr><th>text (as the model read it)</th><th>true</th><th>predicted</th><th>probability</th></tr>{body}</table>"


def _figure(panels: int, *, cols: int | None = None, width: float = 6.0, height: float = 4.0):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = cols or panels
    fig, axes = plt.subplots(-(-panels // cols), cols, figsize=(width, height), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[panels:]:
        ax.axis("off")
    return fig, flat[:panels]


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _e(value)


def _e(value: Any) -> str:
    return html.escape(str(value))
