"""A trained network as the registry serves it: raw pixels in, class probabilities out.

Normalisation (``stats.json``'s mean and std, applied exactly as preprocessing applied them) and
the softmax sit around the network, so whoever loads the registered model feeds it the source's
raw pixel values and needs neither this project's data code nor its statistics. When the
network's first layer is affine in its input (the mlp's first linear layer, the lstm's input
weights, the transformer's patch projection), the normalisation can instead be folded into that
layer's weights (:func:`fold_into_affine`): the same function, one full pass over the batch less.
:func:`inference_device` reads where a registered model runs from MLflow's ``model_config``, and
:func:`pixel_range_problem` is the one check, shared by the served model and batch prediction, that
inputs are on the training pixels' scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

# How far past the training split's pixel range an input may reach, as a fraction of that range:
# room for another scanner or resampling, none for another scale (0..255 against the digits' 0..16).
RANGE_MARGIN = 0.05
# An input whose largest value stays below this fraction of the training range is on a smaller
# scale (0..1 floats, as torchvision's ToTensor gives, for a model trained on 0..255).
RANGE_FLOOR = 0.1


class RawPixelClassifier(nn.Module):
    """``(B, C, H, W)`` raw pixels -> ``(B, K)`` class probabilities.

    ``fold_normalisation=True`` asks the network to absorb the normalisation into its first layer
    (its ``fold_input_normalisation(mean (C,), std (C,)) -> bool`` method, which rewrites that
    layer's weights in place and says whether it could). The normalisation's full pass over the
    batch, on a small network as long as the first layer itself, is then skipped. Outputs equal
    the unfolded ones up to float rounding. The cnn cannot fold (its convolution zero-pads the
    *normalised* image), nor can token models; they keep the explicit normalisation.
    """

    def __init__(
        self,
        network: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        fold_normalisation: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        channels = len(mean)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, channels, 1, 1))
        fold = getattr(network, "fold_input_normalisation", None) if fold_normalisation else None
        self.folded = bool(fold is not None and fold(self.mean.view(-1), self.std.view(-1)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float()  # (B, C, H, W)
        if not self.folded:
            # The same operations as preprocessing's (x - mean) / std, so the same values;
            # dividing in place saves a second full-size temporary (half the cost on 28x28 images).
            x = torch.sub(x, self.mean).div_(self.std)
        return class_probabilities(self.network(x))  # (B, K)


def fold_into_affine(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rewrite an affine input layer in place so that it takes raw pixels.

    The layer computes ``y[o] = sum_i W[o, i] * x[i] + b[o]`` over one input ``i`` (a linear
    layer's features, or a convolution's ``(C, kh, kw)`` window, stride = kernel, no padding);
    ``mean`` and ``std`` broadcast against one input (``weight.shape[1:]``). Fed ``x = (p - mean) / std``
    it gave what it now gives fed ``p``: ``W' = W / std`` and ``b' = b - sum_i W'[o, i] * mean[i]``,
    worked out in float64 and rounded once.
    """
    with torch.no_grad():
        scaled = weight.double() / std.double()  # (O, *input)
        shift = (scaled * mean.double()).flatten(1).sum(dim=1)  # (O,)
        bias.copy_(bias.double() - shift)
        weight.copy_(scaled)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` logits -> ``(B, K)`` softmax over the classes, written out.

    Same values as ``torch.softmax(logits, dim=1)`` (within float rounding), about 2x faster at
    1,024 x 10 and 4x at 8,192 x 10 on CPU: ATen's softmax kernel handles rows of a few classes
    poorly, and a registered model's probabilities must not cost a noticeable part of a small
    network's forward.
    """
    shifted = logits - logits.amax(dim=1, keepdim=True)  # (B, K), each row's largest is 0: no overflow
    exps = shifted.exp()  # (B, K)
    return exps / exps.sum(dim=1, keepdim=True)  # (B, K), rows sum to 1


def inference_device(model_config: Mapping[str, Any] | None) -> torch.device:
    """The device ``model_config["device"]`` names; an unknown name, or a device this machine lacks,
    is refused with the key named."""
    name = str((model_config or {}).get("device", "auto"))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"model_config['device'] = {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:<n>'")
    if device.type == "cuda" and not (
        torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    ):
        raise ValueError(f"model_config['device'] = {name!r}: this machine has no such CUDA device")
    return device


def pixel_range_problem(
    pixels: Any, pixel_min: Sequence[float], pixel_max: Sequence[float]
) -> tuple[str, str] | None:
    """Why ``pixels`` (N, C, H, W, a numpy array: typed ``Any`` as this package imports only torch)
    are not on the scale of the training split's raw pixels (per channel ``pixel_min..pixel_max``):
    ``(rule, detail)``, or ``None`` when they are.

    The network takes any numbers and answers each without a word, so images on another scale get
    wrong answers: on the digits (trained on 0..16), 0..1 floats took every architecture to about
    chance and 0..255 values (8-bit PNGs) the lstm to 14%. Refused: any value more than
    ``RANGE_MARGIN`` of the range outside it, or an input whose largest value stays within the
    bottom ``RANGE_FLOOR`` of it.
    """
    several = len(pixel_min) > 1
    for channel, (lo, hi) in enumerate(zip(pixel_min, pixel_max, strict=True)):
        values = pixels[:, channel]  # (N, H, W)
        low, high = float(values.min()), float(values.max())
        span = hi - lo
        trained = f"the training data's range {lo:g}..{hi:g}" + (f" in channel {channel}" if several else "")
        below, above = lo - RANGE_MARGIN * span, hi + RANGE_MARGIN * span
        if low < below or high > above:
            outside = int(((values < below) | (values > above)).sum())
            return (
                f"pixel values must lie within {trained}",
                f"{outside} of {values.size} values lie outside it, from {low:g} to {high:g}",
            )
        if span > 0 and high < lo + RANGE_FLOOR * span:
            return (
                f"pixel values must span {trained}",
                f"the largest is {high:g}, within its bottom tenth, as if scaled to 0..1",
            )
    return None
