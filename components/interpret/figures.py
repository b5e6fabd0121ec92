"""The pictures of an explanation: the per-class grid (images), the top-token chart and the HTML
page of wrong predictions with coloured tokens (text)."""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

GRID_COLUMNS = (
    "mean IG\n(class's samples)",
    "mean saliency",
    "right example",
    "its IG",
    "wrong example",
    "its IG\n(to predicted)",
)


@dataclass(frozen=True)
class Example:
    """One test image shown in the grid, with its attribution towards the predicted class."""

    image: np.ndarray  # (C, H, W) normalised
    scores: np.ndarray  # (H, W)
    predicted: str


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set here, not at import time
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    try:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _image_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) normalised -> (H, W, 3) in 0..1: grey (one channel) or RGB, stretched to its range."""
    picture = image.transpose(1, 2, 0) if image.shape[0] == 3 else np.repeat(image[0][..., None], 3, axis=2)
    low, high = float(picture.min()), float(picture.max())
    return (picture - low) / (high - low or 1.0)


def _map_rgb(scores: np.ndarray, signed: bool = True) -> np.ndarray:
    """(H, W) -> (H, W, 3): signed maps red (towards the class) / blue (away) around white,
    magnitudes on magma, each scaled to its own largest absolute value."""
    from matplotlib import colormaps

    limit = float(np.abs(scores).max()) or 1.0
    if signed:
        return colormaps["bwr"](0.5 + 0.5 * scores / limit)[..., :3]
    return colormaps["magma"](scores / limit)[..., :3]


def image_grid(
    class_names: list[str],
    mean_ig: np.ndarray,
    mean_saliency: np.ndarray,
    right: list[Example | None],
    wrong: list[Example | None],
    title: str,
) -> bytes:
    """PNG: one row per class: mean IG and saliency maps (K, H, W) and a right and a wrong example.

    The cells are laid out in one array and drawn as one image: a figure of K x 6 axes took
    seconds to lay out, more than the attributions cost on small data.
    """
    plt = _pyplot()
    k, (h, w), columns = len(class_names), mean_ig.shape[1:], len(GRID_COLUMNS)
    pad = max(2, h // 3)
    canvas = np.ones((k * (h + pad) + pad, columns * (w + pad) + pad, 3))  # white between cells
    notes: list[tuple[int, int, str]] = []  # (row, column, text) of cells without an example
    for row in range(k):
        cells: list[np.ndarray | str] = [_map_rgb(mean_ig[row]), _map_rgb(mean_saliency[row], signed=False)]
        for example, missing in ((right[row], "none right"), (wrong[row], "no wrong\nprediction")):
            cells += (
                [missing, ""] if example is None else [_image_rgb(example.image), _map_rgb(example.scores)]
            )
        for column, cell in enumerate(cells):
            if isinstance(cell, str):
                notes.append((row, column, cell))
                continue
            top, left = pad + row * (h + pad), pad + column * (w + pad)
            canvas[top : top + h, left : left + w] = cell
    fig, ax = plt.subplots(figsize=(1.3 * columns + 1, 1.3 * k + 0.8), dpi=80)
    ax.imshow(canvas, interpolation="nearest")
    centre = pad + (np.arange(max(k, columns)) * (h + pad)) + h / 2
    ax.set_xticks(pad + np.arange(columns) * (w + pad) + w / 2, GRID_COLUMNS, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks(centre[:k], class_names, fontsize=8)
    for row, column, text in notes:
        x, y = pad + column * (w + pad) + w / 2, pad + row * (h + pad) + h / 2
        ax.text(x, y, text, ha="center", va="center", fontsize=6)
    for row, example in enumerate(wrong):
        if example is not None:  # the wrong example's prediction, under it
            x, y = pad + 4 * (w + pad) + w / 2, pad + row * (h + pad) + h + pad / 2
            ax.text(x, y, f"as {example.predicted}", ha="center", va="center", fontsize=6, color="black")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def token_chart(top_tokens: dict[str, list[tuple[str, float]]], title: str) -> bytes:
    """PNG: per class, a bar chart of the tokens that push most towards it."""
    plt = _pyplot()
    k = len(top_tokens)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.6), dpi=80, squeeze=False)
    for ax, (name, tokens) in zip(axes[0], top_tokens.items(), strict=True):
        words = [token for token, _ in tokens][::-1]
        ax.barh(range(len(words)), [score for _, score in tokens][::-1], color="tab:red")
        ax.set_yticks(range(len(words)), words, fontsize=8)
        ax.set_title(f"towards {name}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


@dataclass(frozen=True)
class WrongText:
    """One wrongly classified text with its tokens' attributions towards the predicted class."""

    text: str
    true_class: str
    predicted: str
    tokens: list[str]
    scores: list[float]


def _token_span(token: str, score: float, limit: float) -> str:
    strength = min(1.0, abs(score) / limit) if limit > 0 else 0.0
    colour = "220,40,40" if score > 0 else "40,90,220"  # red: towards the predicted class
    return (
        f'<span style="background: rgba({colour},{strength:.3f})" title="{score:+.4f}">'
        f"{html.escape(token)}</span>"
    )


def wrong_texts_html(
    title: str, examples: list[WrongText], top_tokens: dict[str, list[tuple[str, float]]]
) -> str:
    """A self-contained HTML page (no script, no external resource); every text is escaped."""
    rows = []
    for example in examples:
        limit = max((abs(s) for s in example.scores), default=0.0)
        spans = " ".join(
            _token_span(t, s, limit) for t, s in zip(example.tokens, example.scores, strict=True)
        )
        rows.append(
            f"<tr><td>{html.escape(example.true_class)}</td><td>{html.escape(example.predicted)}</td>"
            f"<td><div class=raw>{html.escape(example.text)}</div><div>{spans}</div></td></tr>"
        )
    tops = "".join(
        f"<li><b>{html.escape(name)}</b>: "
        + ", ".join(f"{html.escape(token)} ({score:+.3f})" for token, score in tokens)
        + "</li>"
        for name, tokens in top_tokens.items()
    )
    body = "".join(rows) or '<tr><td colspan="3">no wrong prediction in the test split</td></tr>'
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>body{{font-family:sans-serif}}td{{vertical-align:top;"
        "padding:4px;border-bottom:1px solid #ddd}.raw{color:#666;font-size:small}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>Tokens coloured by integrated gradients towards the "
        "<b>predicted</b> class: red pushes towards it, blue away from it (hover for the value).</p>"
        f"<h2>Tokens that push most towards each class</h2><ul>{tops}</ul>"
        f"<h2>Wrong predictions</h2><table><tr><th>true</th><th>predicted</th><th>text</th></tr>{body}"
        "</table></body></html>\n"
    )
