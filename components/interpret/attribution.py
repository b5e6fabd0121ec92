"""Integrated gradients (Captum) for every architecture, and saliency for images.

Images are attributed on the normalised input, from the normalised background (the value a raw
zero pixel maps to). Token ids are not differentiable, so text is attributed on the embedding
layer's output: :class:`EmbeddedInput` runs the model on its ids with that output replaced by the
tensor being integrated. The padding masks still come from the ids, so the path runs from the
[PAD] embedding (zero) to the real one at every real position and the convergence delta measures
the integration error alone (Captum's ``LayerIntegratedGradients`` would evaluate the model on
all-[PAD] ids for its delta, a different sequence length, and report a gap that is not one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients, Saliency
from torch import nn

from components.models import PAD_ID
from components.models.tokens import real_tokens

METHOD = "gausslegendre"  # Captum's default; converges far faster than the Riemann rules


@dataclass(frozen=True)
class Attributions:
    """Integrated gradients of a batch towards given classes."""

    scores: np.ndarray
    """Images: (N, H, W), summed over channels. Text: (N, T), summed over the embedding width."""
    delta: np.ndarray
    """(N,) completeness gap: sum of attributions - (f(x) - f(baseline)), in logits."""


@dataclass(frozen=True)
class Converged:
    """Attributions after :func:`converged`, with the most integration steps any input needed."""

    attributions: Attributions
    steps: int
    refined: int
    """Inputs integrated again with more steps."""


def converged(
    attribute: Callable[[np.ndarray, int], Attributions],
    count: int,
    steps: int,
    max_steps: int,
    tolerance: float,
) -> Converged:
    """``attribute(rows, steps)`` for all ``count`` inputs, then again with twice the steps for the
    inputs whose |delta| exceeds ``tolerance``, until none does or ``max_steps`` is reached.

    Most inputs converge with few steps; a pre-norm transformer's path from the zero baseline
    turns sharply near it (its LayerNorm sees the tiny position embeddings alone) and needs more.
    """
    first = attribute(np.arange(count), steps)
    scores, delta = first.scores.copy(), first.delta.copy()
    used, refined = steps, np.zeros(count, dtype=bool)
    while used < max_steps:
        pending = np.flatnonzero(np.abs(delta) > tolerance)
        if not len(pending):
            break
        used = min(2 * used, max_steps)
        again = attribute(pending, used)
        scores[pending], delta[pending] = again.scores, again.delta
        refined[pending] = True
    return Converged(Attributions(scores, delta), used, int(refined.sum()))


class EmbeddedInput(nn.Module):
    """``model(ids)`` with ``layer``'s output replaced by ``embedded`` (B, T, E): a function of the
    embeddings that integrated gradients can differentiate. Models that drop all-padding columns
    first (:func:`~components.models.tokens.trim_padding`) get the same columns of ``embedded``.

    The rows go in longest first (a stable sort), the order in which the lstm embeds them (for
    DP-SGD): its own sort is then the identity, so each row's embedding replaces its own."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, embedded: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        lengths = real_tokens(ids).sum(dim=1)  # (B,)
        order = torch.sort(lengths, descending=True, stable=True).indices  # (B,)
        ordered = embedded[order]  # (B, T, E)

        def replace(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
            return ordered[:, : output.shape[1]]  # (B, T', E)

        handle = self.layer.register_forward_hook(replace)
        try:
            logits = self.model(ids[order])  # (B, K), longest first
        finally:
            handle.remove()
        return logits[torch.argsort(order)]  # back in the input's order


def embedding_layer(model: nn.Module) -> nn.Embedding:
    """The token embedding of a text model (``embedding``, or the transformer's ``embed``)."""
    for name in ("embedding", "embed"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Embedding):
            return layer
    raise TypeError(f"{type(model).__name__} has no token embedding to attribute on")


@contextlib.contextmanager
def backward_ready(device: torch.device) -> Iterator[None]:
    """cuDNN's RNN backward refuses eval mode; attributions need eval mode (no dropout), so cuDNN
    is switched off for them on a GPU (the CPU kernels have no such rule)."""
    if device.type == "cuda":
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


def image_background(mean: list[float], std: list[float], device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1): what a raw zero pixel becomes after normalisation, per channel."""
    values = [(0.0 - m) / s for m, s in zip(mean, std, strict=True)]
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def integrated_gradients_images(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    background: torch.Tensor,
    steps: int,
    internal_batch_size: int,
) -> Attributions:
    """IG of ``x`` (N, C, H, W) normalised towards ``targets`` (N,), from ``background``."""
    if not len(x):
        return _nothing((0, *x.shape[2:]))
    ig = IntegratedGradients(model)
    with backward_ready(x.device):
        attr, delta = ig.attribute(
            x,
            baselines=background.expand_as(x).contiguous(),
            target=targets,
            n_steps=steps,
            method=METHOD,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    return Attributions(_numpy(attr.sum(dim=1)), _numpy(delta))  # (N, H, W), (N,)


def integrated_gradients_tokens(
    model: nn.Module, ids: torch.Tensor, targets: torch.Tensor, steps: int, internal_batch_size: int
) -> Attributions:
    """IG of token ids (N, T) towards ``targets`` (N,), on the embeddings, from [PAD]'s (zero)."""
    if not len(ids):
        return _nothing(tuple(ids.shape))
    layer = embedding_layer(model)
    with torch.no_grad():
        embedded = layer(ids)  # (N, T, E)
        baseline = layer.weight[PAD_ID].expand_as(embedded).contiguous()  # (N, T, E), zeros
    ig = IntegratedGradients(EmbeddedInput(model, layer))
    with backward_ready(ids.device):
        attr, delta = ig.attribute(
            embedded,
            baselines=baseline,
            target=targets,
            additional_forward_args=(ids,),
            n_steps=steps,
            method=METHOD,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    scores = attr.sum(dim=2) * (ids != PAD_ID)  # (N, T); padding gets exactly 0
    return Attributions(_numpy(scores), _numpy(delta))


def saliency_images(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """|d logit / d pixel| of ``x`` (N, C, H, W) towards ``targets``, max over channels: (N, H, W)."""
    with backward_ready(x.device):
        inputs = x.detach().clone().requires_grad_(True)  # Captum warns when it has to set it
        grads = Saliency(model).attribute(inputs, target=targets, abs=True)
    return _numpy(grads.amax(dim=1))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _nothing(shape: tuple[int, ...]) -> Attributions:
    """The attributions of an empty batch (Captum refuses one)."""
    return Attributions(np.zeros(shape, dtype=np.float32), np.zeros(0, dtype=np.float32))
