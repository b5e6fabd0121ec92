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


def _show_image(ax: Any, image: np.ndarray) -> None:
    """(C, H, W) normalised -> grey (one channel) or RGB, stretched to its own range."""
    picture = image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    low, high = float(picture.min()), float(picture.max())
    ax.imshow((picture - low) / (high - low or 1.0), cmap="gray" if picture.ndim == 2 else None)


def _show_map(ax: Any, scores: np.ndarray, signed: bool = True) -> None:
    limit = float(np.abs(scores).max()) or 1.0
    if signed:  # red pushes towards the class, blue away, white nothing
        ax.imshow(scores, cmap="bwr", vmin=-limit, vmax=limit)
    else:
        ax.imshow(scores, cmap="magma", vmin=0, vmax=limit)


def image_grid(
    class_names: list[str],
    mean_ig: np.ndarray,
    mean_saliency: np.ndarray,
    right: list[Example | None],
    wrong: list[Example | None],
    title: str,
) -> bytes:
    """PNG: one row per class: mean IG and saliency maps (K, H, W) and a right and a wrong example."""
    plt = _pyplot()
    k = len(class_names)
    fig, axes = plt.subplots(k, len(GRID_COLUMNS), figsize=(1.6 * len(GRID_COLUMNS), 1.6 * k + 0.6), dpi=80)
    axes = np.atleast_2d(axes)
    for row, name in enumerate(class_names):
        _show_map(axes[row, 0], mean_ig[row])
        _show_map(axes[row, 1], mean_saliency[row], signed=False)
        for column, example, missing in (
            (2, right[row], "none right"),
            (4, wrong[row], "no wrong\nprediction"),
        ):
            if example is None:
                axes[row, column].text(0.5, 0.5, missing, ha="center", va="center", fontsize=8)
                axes[row, column + 1].set_visible(False)
                continue
            _show_image(axes[row, column], example.image)
            _show_map(axes[row, column + 1], example.scores)
            axes[row, column].set_xlabel(f"predicted {example.predicted}", fontsize=7)
        axes[row, 0].set_ylabel(name, fontsize=9)
    for column, label in enumerate(GRID_COLUMNS):
        axes[0, column].set_title(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
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
