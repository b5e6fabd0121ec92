"""``mlp``: flatten -> hidden layers (ReLU, dropout) -> class logits."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from .raw_pixels import fold_into_affine


@dataclass(frozen=True)
class MLPConfig:
    input_shape: tuple[int, ...]  # one input, e.g. (C, H, W) = (1, 28, 28)
    num_classes: int  # width of the logits
    hidden_sizes: tuple[int, ...] = (256, 128)  # hidden layer widths, input side first
    dropout: float = 0.0  # dropout after each hidden layer


class MLP(nn.Module):
    """A multi-layer perceptron over the flattened input."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        widths = [math.prod(config.input_shape), *config.hidden_sizes]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Dropout(config.dropout)]
        layers.append(nn.Linear(widths[-1], config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, *input_shape) -> logits (B, num_classes)
        return self.net(x)

    def fold_input_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> bool:
        """Make the first linear layer take raw pixels (see :class:`RawPixelClassifier`).

        ``mean``, ``std``: ``(C,)`` per channel; the flattened input is channel-major.
        """
        if len(self.config.input_shape) != 3 or len(mean) != self.config.input_shape[0]:
            return False
        per_channel = math.prod(self.config.input_shape[1:])  # H*W features per channel
        first = self.net[1]
        assert isinstance(first, nn.Linear)
        fold_into_affine(
            first.weight, first.bias, mean.repeat_interleave(per_channel), std.repeat_interleave(per_channel)
        )
        return True
