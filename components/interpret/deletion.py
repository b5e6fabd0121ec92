"""The deletion test: does removing what an attribution ranks highest hurt the model more than
removing as much at random?

Images: the top ``fraction`` of pixel positions (all channels) are set to the normalised
background. Text: the top ``fraction`` of each text's real tokens (at least one) become [UNK]:
[PAD] cannot stand for a deleted token, since every model masks padding out (a [PAD] in the middle
would be skipped as if the text were shorter, and one at the start read as a real token), while
[UNK] is what the models saw for every out-of-vocabulary word in training. The random deletion
removes as many pixels or tokens per input, drawn with a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# (N, ...) inputs -> (N,) predicted class ids
Classify = Callable[[torch.Tensor], np.ndarray]


def deletion_count(available: int, fraction: float) -> int:
    """Pixels or tokens to delete out of ``available``: ``fraction`` of them rounded, at least one."""
    return max(1, min(available, round(fraction * available)))


def top_positions(scores: np.ndarray, valid: np.ndarray, fraction: float) -> np.ndarray:
    """(N, P) bool: per row, the ``fraction`` of ``valid`` (N, P) positions with the highest score
    (ties: the earlier position first)."""
    chosen = np.zeros_like(valid, dtype=bool)
    for row, (score, ok) in enumerate(zip(scores, valid, strict=True)):
        candidates = np.flatnonzero(ok)
        order = candidates[np.argsort(-score[candidates], kind="stable")]
        chosen[row, order[: deletion_count(len(candidates), fraction)]] = True
    return chosen


def random_positions(valid: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(N, P) bool: per row, as many ``valid`` positions as :func:`top_positions` takes, at random."""
    chosen = np.zeros_like(valid, dtype=bool)
    for row, ok in enumerate(valid):
        candidates = np.flatnonzero(ok)
        picked = rng.choice(candidates, deletion_count(len(candidates), fraction), replace=False)
        chosen[row, picked] = True
    return chosen


def delete_pixels(x: torch.Tensor, chosen: np.ndarray, background: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` (N, C, H, W) with the ``chosen`` (N, H*W) positions set to ``background``
    (1, C, 1, 1) in every channel."""
    n, c, h, w = x.shape
    mask = torch.from_numpy(chosen.reshape(n, 1, h, w)).to(x.device)  # (N, 1, H, W)
    return torch.where(mask, background.expand(n, c, h, w), x)


def delete_tokens(ids: torch.Tensor, chosen: np.ndarray, unk_id: int) -> torch.Tensor:
    """A copy of ``ids`` (N, T) with the ``chosen`` (N, T) positions set to ``unk_id``."""
    mask = torch.from_numpy(chosen).to(ids.device)
    return torch.where(mask, torch.full_like(ids, unk_id), ids)


def deletion_report(
    labels: np.ndarray, intact: np.ndarray, top: np.ndarray, random: np.ndarray, fraction: float
) -> dict[str, Any]:
    """Accuracies (from (N,) predictions) intact, after the top and the random deletion, their drops,
    and ``faithful``: whether the top deletion lowered accuracy at all, and more than the random
    one did (a random deletion that happened to raise accuracy does not excuse a top one that
    changed nothing)."""
    accuracy = float(np.mean(intact == labels))
    top_accuracy = float(np.mean(top == labels))
    random_accuracy = float(np.mean(random == labels))
    top_drop, random_drop = accuracy - top_accuracy, accuracy - random_accuracy
    return {
        "fraction": fraction,
        "accuracy": accuracy,
        "top_accuracy": top_accuracy,
        "random_accuracy": random_accuracy,
        "top_drop": top_drop,
        "random_drop": random_drop,
        # None when random deletion cost nothing (a ratio would be infinite; JSON has no inf)
        "drop_ratio": top_drop / random_drop if random_drop > 0 else None,
        "faithful": top_drop > max(random_drop, 0.0),
    }


def unfaithful_warning(method: str, report: dict[str, Any]) -> str:
    """The report's warning for an attribution that hurt the model no more than random deletion."""
    return (
        f"{method}: deleting the top {report['fraction']:.0%} attributed inputs lowered accuracy by "
        f"{report['top_drop']:.4f}, random deletion of as many by {report['random_drop']:.4f}: "
        "the attribution does not point at what the model uses more than chance does"
    )
