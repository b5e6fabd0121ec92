"""``lstm``: a sequence -> LSTM -> dense on the final hidden state -> class logits.

Images are read row by row: an image (C, H, W) is H time steps of C*W features, and the final
hidden state feeds the head. Token input (``vocab_size`` set) is a (B, T) tensor of ids,
right-padded with ``PAD_ID``, embedded first and packed, so that the LSTM stops at each row's
last real token and the padding changes neither the result nor the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .raw_pixels import fold_into_affine
from .tokens import check_input_kind, real_tokens, token_embedding


@dataclass(frozen=True)
class LSTMConfig:
    input_shape: tuple[int, ...]  # (C, H, W) of one image, or (T,) of one token sequence
    num_classes: int  # width of the logits
    hidden_size: int = 64  # LSTM hidden state width
    num_layers: int = 1  # stacked LSTM layers
    dense_size: int = 64  # dense layer on the last hidden state
    vocab_size: int | None = None  # token input: the tokenizer's vocabulary size; None: images
    embedding_dim: int = 64  # token input: embedding width
    dropout: float = 0.0  # on each time step's input (text: the embeddings) and on the final hidden state

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
        vocab = config.vocab_size
        self.embedding = None if vocab is None else token_embedding(vocab, config.embedding_dim)
        self.lstm = nn.LSTM(
            config.step_features, config.hidden_size, num_layers=config.num_layers, batch_first=True
        )
        self.head = nn.Sequential(
            nn.Linear(config.hidden_size, config.dense_size),
            nn.ReLU(),
            nn.Linear(config.dense_size, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:  # x: (B, T) ids
            # Rows longest first through every layer, the logits back in the input's order at the
            # end: per-example gradients (DP-SGD, Opacus) then line up row by row in every layer.
            lengths = real_tokens(x).sum(dim=1)  # (B,)
            order = torch.sort(lengths, descending=True, stable=True).indices  # (B,)
            last = self._dropout(self._last_real_output(x[order]))  # (B, hidden_size)
            logits = self.head(last)  # (B, num_classes)
            return logits[torch.argsort(order)]
        b, c, h, w = x.shape
        steps = x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # (B, C, H, W) -> (B, H, C*W)
        _, (hidden, _) = self.lstm(self._dropout(steps))  # hidden: (num_layers, B, hidden_size)
        return self.head(self._dropout(hidden[-1]))  # (B, hidden_size) -> (B, num_classes)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        # functional: the head's layer indices (and so older weights files) stay as they were
        return F.dropout(x, self.config.dropout, self.training)

    def _last_real_output(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded ids -> (B, hidden_size): the top layer's output at each last real token.

        The LSTM runs over each row's real tokens only (a packed sequence), so the padding costs
        no steps and cannot reach the final hidden state.
        """
        assert self.embedding is not None
        lengths = real_tokens(x).sum(dim=1).cpu()  # (B,), on the host as packing requires
        embedded = self._dropout(self.embedding(x))  # (B, T, embedding_dim)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)  # hidden: (num_layers, B, hidden_size), in the input's order
        # (forward passes the rows longest first, so packing keeps them in place)
        return hidden[-1]

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
