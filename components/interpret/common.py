"""What the image and the text explanations share: the sample, batched prediction, report pieces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import ExplainParams
from components.interpret.attribution import Converged
from components.interpret.deletion import unfaithful_warning


@dataclass(frozen=True)
class Scored:
    """The model's answers on the whole test split."""

    classes: np.ndarray  # (N,) predicted class ids
    confidence: np.ndarray  # (N,) softmax probability of the predicted class


@torch.inference_mode()
def classify(model: nn.Module, x: torch.Tensor, batch_size: int) -> Scored:
    """Predicted classes and their probabilities for ``x`` (N, ...) on the model's device."""
    model.eval()
    classes, confidence = [], []
    for start in range(0, len(x), batch_size):
        top, chosen = model(x[start : start + batch_size]).float().softmax(dim=1).max(dim=1)  # (B,), (B,)
        classes.append(chosen.cpu())
        confidence.append(top.cpu())
    return Scored(torch.cat(classes).numpy().astype(np.int64), torch.cat(confidence).numpy())


def sample_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted test rows: up to ``per_class`` drawn at random from each class (all of a smaller one)."""
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def most_confident_wrong(labels: np.ndarray, scored: Scored) -> np.ndarray:
    """Rows predicted wrongly, the most confident first (ties by row)."""
    wrong = np.flatnonzero(scored.classes != labels)
    return wrong[np.argsort(-scored.confidence[wrong], kind="stable")]


def first_right(labels: np.ndarray, scored: Scored, rows: np.ndarray, label: int) -> int | None:
    """The first of ``rows`` (then of the whole split) of class ``label`` predicted right."""
    for candidates in (rows, np.arange(len(labels))):
        hits = candidates[(labels[candidates] == label) & (scored.classes[candidates] == label)]
        if len(hits):
            return int(hits[0])
    return None


def convergence(parts: list[Converged], tolerance: float, warnings: list[str]) -> dict[str, Any]:
    """Largest and mean |convergence delta| over every attributed input (logit units), the most
    steps an input needed and how many needed more than ``explain.steps``; a warning when the
    largest delta is still above ``tolerance``."""
    deltas = np.abs(np.concatenate([part.attributions.delta for part in parts]))
    largest = float(deltas.max()) if len(deltas) else 0.0
    if largest > tolerance:
        warnings.append(
            f"integrated gradients: largest convergence delta {largest:.4g} > explain.delta_tolerance "
            f"{tolerance:g} after explain.max_steps; raise max_steps for exact attributions"
        )
    return {
        "max_abs_delta": largest,
        "mean_abs_delta": float(deltas.mean()) if len(deltas) else 0.0,
        "steps_used": max(part.steps for part in parts),
        "refined_inputs": sum(part.refined for part in parts),
    }


def method_block(name: str, deletion: dict[str, Any], warnings: list[str], **extra: Any) -> dict[str, Any]:
    """One attribution method's report: its figures and deletion test; a warning when unfaithful."""
    if not deletion["faithful"]:
        warnings.append(unfaithful_warning(name, deletion))
    return {**extra, "deletion": deletion}


def settings_summary(settings: ExplainParams, samples: int) -> dict[str, Any]:
    return {
        "enabled": True,
        "samples": samples,
        "samples_per_class": settings.samples_per_class,
        "steps": settings.steps,
        "method": "integrated gradients, Gauss-Legendre",
    }


def report_from(
    settings: ExplainParams, samples: int, blocks: dict[str, dict[str, Any]], warnings: list[str]
) -> dict[str, Any]:
    """explain.json's body: ``faithful`` is integrated gradients' verdict (the stage's main method)."""
    ig = blocks["integrated_gradients"]
    return {
        **settings_summary(settings, samples),
        **blocks,
        "faithful": bool(ig["deletion"]["faithful"]),
        "warnings": warnings,
    }
