"""Explaining a text model: integrated gradients per token (on the embeddings) for a seeded sample
of the test split, the tokens that push most towards each class, the wrong predictions with their
tokens coloured, and the deletion test (top tokens -> [UNK] against random ones)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import ExplainParams
from components.data.text_stats import TextStats
from components.interpret.attribution import Attributions, Converged, converged, integrated_gradients_tokens
from components.interpret.common import (
    classify,
    convergence,
    method_block,
    most_confident_wrong,
    report_from,
    sample_indices,
)
from components.interpret.deletion import delete_tokens, deletion_report, random_positions, top_positions
from components.interpret.figures import WrongText, token_chart, wrong_texts_html
from components.models import PAD_ID

CHART_PNG = "attributions.png"
WRONG_HTML = "wrong_predictions.html"
TOP_TOKENS = 10  # tokens listed per class
WRONG_SHOWN = 50  # wrong predictions on the page, the most confident first


def explain_text(
    model: nn.Module,
    ids: torch.Tensor,
    labels: np.ndarray,
    texts: list[str],
    stats: TextStats,
    vocabulary: list[str],
    settings: ExplainParams,
    batch_size: int,
    title: str,
) -> tuple[dict[str, Any], dict[str, bytes], dict[str, list[tuple[str, float]]]]:
    """Report, files (name -> bytes) and top tokens per class for ``ids`` (N, T) on the model's
    device; ``vocabulary[i]`` is token id i's text."""
    rng = np.random.default_rng(settings.seed)
    scored = classify(model, ids, batch_size)
    rows = sample_indices(labels, settings.samples_per_class, rng)
    sample, ys = ids[rows], labels[rows]
    converged_ig = _integrated_gradients(model, sample, torch.from_numpy(ys).to(ids.device), settings)
    ig = converged_ig.attributions

    wrong_rows = most_confident_wrong(labels, scored)[:WRONG_SHOWN]
    predicted = torch.from_numpy(scored.classes[wrong_rows]).to(ids.device)
    converged_wrong = _integrated_gradients(model, ids[wrong_rows], predicted, settings)
    wrong_ig = converged_wrong.attributions

    valid = (sample != PAD_ID).cpu().numpy()  # (n, T) real tokens
    fraction = settings.deletion_fraction

    def answers(chosen: np.ndarray) -> np.ndarray:
        return classify(model, delete_tokens(sample, chosen, stats.unk_id), batch_size).classes

    deletion = deletion_report(
        ys, scored.classes[rows], answers(top_positions(ig.scores, valid, fraction)),
        answers(random_positions(valid, fraction, rng)), fraction,
    )  # fmt: skip
    warnings: list[str] = []
    blocks = {
        "integrated_gradients": method_block(
            "integrated gradients",
            deletion,
            warnings,
            baseline="the [PAD] embedding (zero) at every real position; attributed on the embeddings",
            deleted_tokens_become="[UNK]",
            **convergence([converged_ig, converged_wrong], settings.delta_tolerance, warnings),
        ),
    }
    top = top_tokens(ig.scores, sample.cpu().numpy(), ys, vocabulary, stats.class_names)
    wrong = [
        _wrong_text(texts[row], ids[row].cpu().numpy(), wrong_ig.scores[i], labels[row], scored.classes[row],
                    vocabulary, stats.class_names)
        for i, row in enumerate(wrong_rows)
    ]  # fmt: skip
    files = {
        CHART_PNG: token_chart(top, title),
        WRONG_HTML: wrong_texts_html(title, wrong, top).encode("utf-8"),
    }
    return report_from(settings, len(rows), blocks, warnings), files, top


def _integrated_gradients(
    model: nn.Module, ids: torch.Tensor, targets: torch.Tensor, settings: ExplainParams
) -> Converged:
    """IG of ``ids`` towards ``targets``, each text integrated until its delta is within tolerance."""

    def attribute(rows: np.ndarray, steps: int) -> Attributions:
        chosen = torch.from_numpy(rows).to(ids.device)
        return integrated_gradients_tokens(
            model, ids[chosen], targets[chosen], steps, settings.internal_batch_size
        )

    return converged(attribute, len(ids), settings.steps, settings.max_steps, settings.delta_tolerance)


def top_tokens(
    scores: np.ndarray, ids: np.ndarray, labels: np.ndarray, vocabulary: list[str], class_names: list[str]
) -> dict[str, list[tuple[str, float]]]:
    """Per class, the :data:`TOP_TOKENS` tokens whose attributions towards it, summed over its
    sampled texts, are largest (only those > 0: tokens that push towards it)."""
    result: dict[str, list[tuple[str, float]]] = {}
    for c, name in enumerate(class_names):
        totals: dict[int, float] = defaultdict(float)
        for score_row, id_row in zip(scores[labels == c], ids[labels == c], strict=True):
            for token, score in zip(id_row.tolist(), score_row.tolist(), strict=True):
                if token != PAD_ID:
                    totals[token] += score
        ranked = sorted(((s, t) for t, s in totals.items() if s > 0), key=lambda pair: (-pair[0], pair[1]))
        result[name] = [(vocabulary[t], round(s, 6)) for s, t in ranked[:TOP_TOKENS]]
    return result


def _wrong_text(
    text: str,
    ids: np.ndarray,
    scores: np.ndarray,
    label: int,
    predicted: int,
    vocabulary: list[str],
    class_names: list[str],
) -> WrongText:
    real = ids != PAD_ID
    return WrongText(
        text=text,
        true_class=class_names[int(label)],
        predicted=class_names[int(predicted)],
        tokens=[vocabulary[int(t)] for t in ids[real]],
        scores=[float(s) for s in scores[real]],
    )
