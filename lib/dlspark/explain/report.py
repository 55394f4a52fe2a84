"""The explanation page: per predicted class, the rows with the strongest attributions; images with their heat
maps overlaid, texts with every token shaded by its score. Pure code (numpy, matplotlib, html)."""
from __future__ import annotations

import base64
import html
import io
from typing import Mapping, Sequence

import numpy as np


def overlay_png(pixels: Sequence[np.ndarray], maps: Sequence[np.ndarray], titles: Sequence[str], columns: int = 6) -> bytes:
    """A grid: each image (uint8 ``[H, W, C]``) in grey with its attribution map (``[H, W]``, >= 0) over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(pixels)
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, heat, title in zip(axes.ravel(), pixels, maps, titles):
        grey = image.mean(axis=-1) if image.ndim == 3 else image
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
        peak = float(np.max(heat)) or 1.0
        ax.imshow(heat / peak, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def token_html(tokens: Sequence[str], scores: Sequence[float]) -> str:
    """The tokens as spans shaded green (pushed toward the predicted class) or red (against it), by |score| over
    the row's largest |score|; the score is the span's tooltip."""
    peak = max((abs(s) for s in scores), default=0.0) or 1.0
    spans = []
    for token, score in zip(tokens, scores):
        alpha = min(1.0, abs(score) / peak)
        colour = f"rgba(0,160,0,{alpha:.2f})" if score >= 0 else f"rgba(220,0,0,{alpha:.2f})"
        spans.append(f"<span title='{score:.4f}' style='background:{colour};padding:0 2px'>{html.escape(token)}</span>")
    return " ".join(spans)


def render_page(title: str, facts: Mapping[str, object], sections: Mapping[str, str]) -> str:
    """Facts, then one section per class (title -> HTML made by the functions above)."""
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    body = "".join(f"<h2>{html.escape(name)}</h2>{part}" for name, part in sections.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:2px 8px;text-align:left;vertical-align:top}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{fact_rows}</table>{body}</body></html>")


def png_img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'/>"
