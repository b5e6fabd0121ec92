"""``mlp``: flatten -> hidden layers (ReLU, dropout) -> class logits.

Token input (``vocab_size`` set): a bag of embeddings, the mean of the (B, T) ids' embeddings over
the real tokens (padding left out), takes the flattened image's place.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .raw_pixels import fold_into_affine
from .tokens import check_input_kind, masked_mean, real_tokens, token_embedding


@dataclass(frozen=True)
class MLPConfig:
    input_shape: tuple[int, ...]  # one input, e.g. (C, H, W) = (1, 28, 28), or (T,) of token ids
    num_classes: int  # width of the logits
    hidden_sizes: tuple[int, ...] = (256, 128)  # hidden layer widths, input side first
    dropout: float = 0.0  # dropout after each hidden layer (token input: on the bag of embeddings too)
    vocab_size: int | None = None  # token input: the tokenizer's vocabulary size; None: images
    embedding_dim: int = 64  # token input: embedding width (the first hidden layer's input)

    def __post_init__(self) -> None:
        check_input_kind("mlp", self.input_shape, self.vocab_size, image_rank=None)

    @property
    def input_features(self) -> int:
        """Width of the first hidden layer's input."""
        return math.prod(self.input_shape) if self.vocab_size is None else self.embedding_dim


class MLP(nn.Module):
    """A multi-layer perceptron over the flattened input or the mean token embedding."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        vocab = config.vocab_size
        self.embedding = None if vocab is None else token_embedding(vocab, config.embedding_dim)
        widths = [config.input_features, *config.hidden_sizes]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Dropout(config.dropout)]
        layers.append(nn.Linear(widths[-1], config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            bag = masked_mean(self.embedding(x), real_tokens(x))  # (B, T) ids -> (B, embedding_dim)
            x = F.dropout(bag, self.config.dropout, self.training)  # as the lstm drops its embeddings
        # x: (B, *input_shape) or (B, embedding_dim) -> logits (B, num_classes)
        return self.net(x)

    def fold_input_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> bool:
        """Make the first linear layer take raw pixels (see :class:`RawPixelClassifier`).

        ``mean``, ``std``: ``(C,)`` per channel; the flattened input is channel-major.
        """
        if self.embedding is not None or len(self.config.input_shape) != 3:
            return False
        if len(mean) != self.config.input_shape[0]:
            return False
        per_channel = math.prod(self.config.input_shape[1:])  # H*W features per channel
        first = self.net[1]
        assert isinstance(first, nn.Linear)
        fold_into_affine(
            first.weight, first.bias, mean.repeat_interleave(per_channel), std.repeat_interleave(per_channel)
        )
        return True
