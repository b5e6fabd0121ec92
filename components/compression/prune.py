"""Magnitude pruning (``torch.nn.utils.prune``) with a short fine-tune, then made permanent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def prune_and_finetune(
    network: nn.Module,
    amount: float,
    epochs: int,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """Zero the ``amount`` smallest-magnitude weights of every Linear/Conv layer (ranked across
    layers), fine-tune ``epochs`` on ``x`` (N, ...) / ``labels`` (N,) with the masks held, then fold
    the masks into the weights. ``network`` is changed in place and returned in eval mode."""
    # Attention reads its out_proj weight directly, never calling the layer's forward, where the
    # pruning mask is applied: pruning it would keep one stale masked tensor across steps.
    skipped = {id(m.out_proj) for m in network.modules() if isinstance(m, nn.MultiheadAttention)}
    layers = [
        (module, "weight")
        for module in network.modules()
        if isinstance(module, PRUNABLE) and id(module) not in skipped
    ]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
    if epochs > 0 and len(x):
        _finetune(network, epochs, x, labels, batch_size, learning_rate, seed)
    for module, name in layers:
        prune.remove(module, name)  # weight = weight_orig * mask, a plain parameter again
    return network.eval()


def _finetune(
    network: nn.Module,
    epochs: int,
    x: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    lr: float,
    seed: int,
) -> None:
    """Cross-entropy with Adam; the pruning masks (forward pre-hooks) keep pruned weights at zero."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=lr)
    network.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            rows = order[start : start + batch_size]
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(network(x[rows]), labels[rows]).backward()
            optimiser.step()
    network.eval()


def nonzero_weights(network: nn.Module) -> int:
    """Non-zero entries of the float parameters (the count pruning lowers)."""
    return sum(int(torch.count_nonzero(p)) for p in network.parameters())
