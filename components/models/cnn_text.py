"""``cnn`` on token input, Kim (2014)'s shape: embedded tokens -> parallel 1-D convolutions of
several widths -> ReLU -> max over time -> dropout -> class logits.

Each convolution pads ``k - 1`` zero steps on both sides, so every window that holds at least one
real token is computed, the shortest text included. Pad embeddings are zeroed, which makes a window
that overlaps the padding equal the same window over the convolution's own zero padding; windows
holding padding only are dropped before the max. The pooled features therefore do not depend on
how many pads follow the text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cnn import CNN, CNNConfig
from .tokens import PAD_ID, real_tokens, token_embedding, trim_padding


class TextCNN(nn.Module):
    """Max-over-time pooled n-gram detectors over token embeddings."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        assert config.vocab_size is not None
        self.config = config
        self.embedding = token_embedding(config.vocab_size, config.embedding_dim)
        self.convs = nn.ModuleList(
            nn.Conv1d(config.embedding_dim, config.filters, k, padding=k - 1) for k in config.kernel_sizes
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.filters * len(config.kernel_sizes), config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T) right-padded ids -> logits (B, num_classes)
        x = trim_padding(x)  # (B, T'): columns of padding only
        embedded = self.embedding(x) * (x != PAD_ID).unsqueeze(-1)  # (B, T, E), pad rows exactly 0
        steps = embedded.transpose(1, 2)  # (B, E, T)
        lengths = real_tokens(x).sum(dim=1, keepdim=True)  # (B, 1)
        pooled = [self._max_over_time(conv, steps, lengths) for conv in self.convs]  # each (B, filters)
        return self.head(self.dropout(torch.cat(pooled, dim=1)))  # (B, filters * len(kernel_sizes))

    @staticmethod
    def _max_over_time(conv: nn.Module, steps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, E, T) -> (B, filters): the largest ReLU output over the windows holding a real token.

        Output j of a width-k convolution covers steps j-k+1 .. j, so the windows with a real token
        are j < length + k - 1. ReLU outputs are >= 0 and at least one window is kept, so zeroing the
        others leaves the maximum unchanged.
        """
        features = F.relu(conv(steps))  # (B, filters, T + k - 1)
        width = features.shape[2] - steps.shape[2] + 1  # k
        positions = torch.arange(features.shape[2], device=features.device)  # (T + k - 1,)
        kept = (positions < lengths + width - 1).unsqueeze(1)  # (B, 1, T + k - 1)
        return (features * kept).amax(dim=2)


def build_cnn(config: CNNConfig) -> nn.Module:
    """The image CNN, or Kim's network when the config takes tokens."""
    return CNN(config) if config.vocab_size is None else TextCNN(config)
