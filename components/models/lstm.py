"""``lstm``: a sequence -> LSTM -> dense on the last hidden state -> class logits.

Images are read row by row: an image (C, H, W) is H time steps of C*W features. Token input
(``vocab_size`` set) is a (B, T) tensor of ids, embedded first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .inputs import check_input_kind
from .raw_pixels import fold_into_affine


@dataclass(frozen=True)
class LSTMConfig:
    input_shape: tuple[int, ...]  # (C, H, W) of one image, or (T,) of one token sequence
    num_classes: int  # width of the logits
    hidden_size: int = 64  # LSTM hidden state width
    num_layers: int = 1  # stacked LSTM layers
    dense_size: int = 64  # dense layer on the last hidden state
    vocab_size: int | None = None  # token input: vocabulary size; None: image rows as steps
    embedding_dim: int = 32  # token input: embedding width

    def __post_init__(self) -> None:
        check_input_kind("lstm", self.input_shape, self.vocab_size)

    @property
    def step_features(self) -> int:
        """Features per time step."""
        if self.vocab_size is not None:
            return self.embedding_dim
        channels, _, width = self.input_shape
        return channels * width


class LSTMClassifier(nn.Module):
    """An LSTM over image rows or embedded tokens."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = (
            nn.Embedding(config.vocab_size, config.embedding_dim) if config.vocab_size is not None else None
        )
        self.lstm = nn.LSTM(
            config.step_features, config.hidden_size, num_layers=config.num_layers, batch_first=True
        )
        self.head = nn.Sequential(
            nn.Linear(config.hidden_size, config.dense_size),
            nn.ReLU(),
            nn.Linear(config.dense_size, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            steps = self.embedding(x)  # (B, T) ids -> (B, T, embedding_dim)
        else:
            b, c, h, w = x.shape
            steps = x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # (B, C, H, W) -> (B, H, C*W)
        _, (hidden, _) = self.lstm(steps)  # hidden: (num_layers, B, hidden_size)
        return self.head(hidden[-1])  # (B, hidden_size) -> (B, num_classes)

    def fold_input_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> bool:
        """Make the first LSTM layer's input weights take raw pixel rows (see
        :class:`RawPixelClassifier`); token input has nothing to fold.

        ``mean``, ``std``: ``(C,)`` per channel; a step's ``C*W`` features are channel-major.
        """
        if self.embedding is not None or len(mean) != self.config.input_shape[0]:
            return False
        width = self.config.input_shape[2]
        per_input = mean.repeat_interleave(width), std.repeat_interleave(width)  # (C*W,) each
        fold_into_affine(
            self.lstm.get_parameter("weight_ih_l0"), self.lstm.get_parameter("bias_ih_l0"), *per_input
        )
        return True
