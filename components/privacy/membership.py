"""A measured privacy check: the loss-threshold membership-inference attack of Yeom et al. (2018).

The attacker guesses "member" (the example was in the training split) when the model's loss on it
is below a threshold: a model that memorised its training examples has lower losses on them than
on examples it never saw. Members are training examples, non-members test examples, as many of
each (the smaller split's size, a seeded subset of the larger). Reported over every threshold:

- ``auc``: the ROC AUC of the score -loss (0.5: the attack does no better than a coin);
- ``advantage``: max over thresholds of TPR - FPR (Yeom et al.'s membership advantage, 0..1).
  (ε, δ)-DP training bounds it by (e^ε - 1 + 2δ) / (e^ε + 1) (Humphries et al. 2020): 0.91 at
  ε = 3, a loose bound; what the attack achieves is measured here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

ATTACK = "loss threshold (Yeom et al. 2018)"


@torch.inference_mode()
def per_example_losses(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> np.ndarray:
    """Cross-entropy of each row of ``x`` (N, ...) against ``labels`` (N,), on ``x``'s device: (N,)."""
    model.eval()
    losses = [
        F.cross_entropy(
            model(x[start : start + batch_size]).float(), labels[start : start + batch_size], reduction="none"
        )
        for start in range(0, len(x), batch_size)
    ]
    return torch.cat(losses).cpu().numpy().astype(np.float64) if losses else np.zeros(0)


def attack_figures(member_losses: np.ndarray, non_member_losses: np.ndarray) -> dict[str, float]:
    """AUC and advantage of the loss-threshold attack given each side's per-example losses."""
    truth = np.concatenate([np.ones(len(member_losses)), np.zeros(len(non_member_losses))])
    score = -np.concatenate([member_losses, non_member_losses])  # lower loss: more likely a member
    fpr, tpr, _ = roc_curve(truth, score)
    return {"auc": float(roc_auc_score(truth, score)), "advantage": float(np.max(tpr - fpr))}


def balanced_subsets(n_members: int, n_non_members: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """As many indices of each side (the smaller count), a seeded subset of the larger side."""
    n = min(n_members, n_non_members)
    rng = np.random.default_rng(seed)
    members = np.sort(rng.choice(n_members, n, replace=False))
    non_members = np.sort(rng.choice(n_non_members, n, replace=False))
    return members, non_members


def membership_inference(
    model: nn.Module,
    members: tuple[np.ndarray, np.ndarray],
    non_members: tuple[np.ndarray, np.ndarray],
    device: torch.device,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Run the attack on ``model``: ``members``/``non_members`` are (x, labels) arrays of the training
    and test splits. Returns what ``reports/<arch>/privacy.json`` holds."""
    (mx, my), (nx, ny) = members, non_members
    pick_m, pick_n = balanced_subsets(len(mx), len(nx), seed)
    if len(pick_m) < 2:
        raise ValueError(f"membership inference needs at least 2 examples per side (got {len(pick_m)})")

    def losses(x: np.ndarray, y: np.ndarray, pick: np.ndarray) -> np.ndarray:
        xt, yt = torch.from_numpy(x[pick]).to(device), torch.from_numpy(y[pick]).long().to(device)
        return per_example_losses(model, xt, yt, batch_size)

    member_losses, non_member_losses = losses(mx, my, pick_m), losses(nx, ny, pick_n)
    return {
        "attack": ATTACK,
        "members": len(pick_m),
        "non_members": len(pick_n),
        "seed": seed,
        **attack_figures(member_losses, non_member_losses),
        "member_loss_mean": float(member_losses.mean()),
        "non_member_loss_mean": float(non_member_losses.mean()),
    }
