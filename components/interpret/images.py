"""Explaining an image model: integrated gradients and saliency on a seeded sample of the test
split, per-class mean maps, a right and a wrong example per class, and the deletion test."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import ExplainParams
from components.data.normalize import Normalization
from components.interpret.attribution import (
    Attributions,
    Converged,
    converged,
    image_background,
    integrated_gradients_images,
    saliency_images,
)
from components.interpret.common import (
    Scored,
    classify,
    convergence,
    first_right,
    method_block,
    most_confident_wrong,
    report_from,
    sample_indices,
)
from components.interpret.deletion import delete_pixels, deletion_report, random_positions, top_positions
from components.interpret.figures import Example, image_grid

GRID_PNG = "attributions.png"


def explain_images(
    model: nn.Module,
    x: torch.Tensor,
    labels: np.ndarray,
    stats: Normalization,
    settings: ExplainParams,
    batch_size: int,
    title: str,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Report and files (name -> bytes) for ``x`` (N, C, H, W) normalised, on the model's device."""
    rng = np.random.default_rng(settings.seed)
    scored = classify(model, x, batch_size)
    rows = sample_indices(labels, settings.samples_per_class, rng)
    background = image_background(stats.mean, stats.std, x.device)  # (1, C, 1, 1)
    xs, ys = x[rows], labels[rows]
    targets = torch.from_numpy(ys).to(x.device)
    ig = _integrated_gradients(model, xs, targets, background, settings)
    saliency = saliency_images(model, xs, targets)  # (n, H, W)
    shown, (right, wrong) = _examples(model, x, labels, scored, rows, background, settings, stats.class_names)

    n, fraction = len(rows), settings.deletion_fraction
    valid = np.ones((n, saliency[0].size), dtype=bool)  # every pixel position may go
    random = random_positions(valid, fraction, rng)

    def answers(scores: np.ndarray | None) -> np.ndarray:
        chosen = random if scores is None else top_positions(scores.reshape(n, -1), valid, fraction)
        return classify(model, delete_pixels(xs, chosen, background), batch_size).classes

    intact, random_answers = scored.classes[rows], answers(None)
    warnings: list[str] = []
    blocks = {
        "integrated_gradients": method_block(
            "integrated gradients",
            deletion_report(ys, intact, answers(ig.attributions.scores), random_answers, fraction),
            warnings,
            baseline="normalised background: the value a raw 0 pixel maps to, per channel",
            **convergence([ig, shown], settings.delta_tolerance, warnings),
        ),
        "saliency": method_block(
            "saliency", deletion_report(ys, intact, answers(saliency), random_answers, fraction), warnings
        ),
    }
    k = len(stats.class_names)
    mean_ig, mean_saliency = _class_means(ig.attributions.scores, ys, k), _class_means(saliency, ys, k)
    png = image_grid(stats.class_names, mean_ig, mean_saliency, right, wrong, title)
    return report_from(settings, n, blocks, warnings), {GRID_PNG: png}


def _integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    background: torch.Tensor,
    settings: ExplainParams,
) -> Converged:
    """IG of ``x`` towards ``targets``, each input integrated until its delta is within tolerance."""

    def attribute(rows: np.ndarray, steps: int) -> Attributions:
        chosen = torch.from_numpy(rows).to(x.device)
        return integrated_gradients_images(
            model, x[chosen], targets[chosen], background, steps, settings.internal_batch_size
        )

    return converged(attribute, len(x), settings.steps, settings.max_steps, settings.delta_tolerance)


def _class_means(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, H, W): the mean map of each class's samples (zeros for a class without any)."""
    means = np.zeros((k, *scores.shape[1:]), dtype=np.float32)
    for c in range(k):
        if np.any(labels == c):
            means[c] = scores[labels == c].mean(axis=0)
    return means


def _examples(
    model: nn.Module,
    x: torch.Tensor,
    labels: np.ndarray,
    scored: Scored,
    rows: np.ndarray,
    background: torch.Tensor,
    settings: ExplainParams,
    class_names: list[str],
) -> tuple[Converged, tuple[list[Example | None], list[Example | None]]]:
    """Per class, a right example (from the sample when it has one) and the most confidently wrong
    one, attributed towards the predicted class; the attributions (for their deltas) and the two lists."""
    k = len(class_names)
    wrong_rows = most_confident_wrong(labels, scored)
    picks: list[tuple[str, int, int]] = []  # (kind, class, test row)
    for c in range(k):
        right = first_right(labels, scored, rows, c)
        if right is not None:
            picks.append(("right", c, right))
        wrong = wrong_rows[labels[wrong_rows] == c]
        if len(wrong):
            picks.append(("wrong", c, int(wrong[0])))
    chosen = torch.as_tensor([row for _, _, row in picks], dtype=torch.long, device=x.device)
    predicted = scored.classes[chosen.cpu().numpy()]
    ig = _integrated_gradients(
        model, x[chosen], torch.from_numpy(predicted).to(x.device), background, settings
    )
    found: dict[str, list[Example | None]] = {"right": [None] * k, "wrong": [None] * k}
    images = x[chosen].detach().cpu().numpy()
    for i, (kind, c, _) in enumerate(picks):
        found[kind][c] = Example(images[i], ig.attributions.scores[i], class_names[int(predicted[i])])
    return ig, (found["right"], found["wrong"])
