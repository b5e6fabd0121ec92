"""``cnn``: [conv 3x3 -> ReLU -> max-pool 2] per entry of ``channels`` -> dense -> class logits.

The classic MNIST network uses unpadded ("valid") convolutions: 28 -> 26 -> 13 -> 11 -> 5. On the
8x8 digits that would shrink the map to nothing (8 -> 6 -> 3 -> 1 -> 0), so ``padding: auto``
(:func:`choose_padding`) keeps valid convolutions while every stage keeps at least a 2x2 map and
pads ("same") otherwise (8 -> 8 -> 4 -> 4 -> 2).

Token input (``vocab_size`` set) takes Kim (2014)'s network instead: :mod:`.cnn_text`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .tokens import check_input_kind

KERNEL = 3
POOL = 2


def spatial_sizes(size: int, stages: int, padding: int) -> list[int]:
    """Side of the feature map after each conv + pool stage, starting from ``size``."""
    sizes = []
    for _ in range(stages):
        size = (size + 2 * padding - (KERNEL - 1)) // POOL
        sizes.append(size)
    return sizes


def choose_padding(height: int, width: int, stages: int) -> int:
    """0 (valid) if every stage keeps a map of at least 2x2, else 1 (same)."""
    smallest = min(spatial_sizes(min(height, width), stages, padding=0), default=min(height, width))
    return 0 if smallest >= 2 else 1


@dataclass(frozen=True)
class CNNConfig:
    input_shape: tuple[int, ...]  # (C, H, W) of one image, or (T,) of one token sequence
    num_classes: int  # width of the logits
    channels: tuple[int, ...] = (32, 64)  # images: output channels of each conv stage
    dense_size: int = 64  # images: width of the dense layer before the classifier
    dropout: float = 0.0  # dropout before the dense layer (tokens: the pooled features) and the classifier
    vocab_size: int | None = None  # token input: the tokenizer's vocabulary size; None: images
    embedding_dim: int = 64  # token input: embedding width
    kernel_sizes: tuple[int, ...] = (3, 4, 5)  # token input: width (in tokens) of each parallel convolution
    filters: int = 100  # token input: output channels of each of those convolutions
    padding: int | None = None  # images: of each 3x3 conv, 0 or 1; None: choose_padding (older model.json)

    def __post_init__(self) -> None:
        check_input_kind("cnn", self.input_shape, self.vocab_size)
        if self.vocab_size is None:
            _ = self.feature_shape  # too many conv+pool stages for the image: refused here, not mid-build
        elif not self.kernel_sizes or min(self.kernel_sizes) < 1:
            raise ValueError(f"cnn: kernel_sizes must be one or more widths >= 1, got {self.kernel_sizes}")

    @property
    def conv_padding(self) -> int:
        """The padding the convolutions use: ``padding``, or the one the image's shape calls for."""
        if self.padding is not None:
            return self.padding
        _, height, width = self.input_shape
        return choose_padding(height, width, len(self.channels))

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the last pooled feature map."""
        _, height, width = self.input_shape
        stages = len(self.channels)
        h = spatial_sizes(height, stages, self.conv_padding)[-1]
        w = spatial_sizes(width, stages, self.conv_padding)[-1]
        if h < 1 or w < 1:
            raise ValueError(
                f"cnn: a {height}x{width} image is too small for {stages} conv+pool stages "
                f"with padding {self.conv_padding}; use fewer models.cnn.channels or models.cnn.padding: auto"
            )
        return self.channels[-1], h, w


class CNN(nn.Module):
    """A small convolutional classifier whose padding adapts to the image size."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        in_channels = config.input_shape[0]
        layers: list[nn.Module] = []
        for out_channels in config.channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, KERNEL, padding=config.conv_padding),
                nn.ReLU(),
                nn.MaxPool2d(POOL),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        c, h, w = config.feature_shape
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(c * h * w, config.dense_size),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.dense_size, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W) -> features (B, channels[-1], h, w) -> logits (B, num_classes)
        return self.head(self.features(x))
