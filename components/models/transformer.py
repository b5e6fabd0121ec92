"""``transformer``: patches (or tokens) embedded with learned positions -> encoder -> pool -> logits.

An image (C, H, W) is zero-padded on the right and bottom to a multiple of ``patch_size`` and cut
into non-overlapping square patches, each projected to ``d_model`` (a strided convolution, as in
ViT). Token input (``vocab_size`` set) is a (B, T) tensor of ids, right-padded with ``PAD_ID`` and
embedded instead, with a position table of T rows; the padding is masked out of attention (as keys)
and out of the mean pool, so it changes no real position's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .raw_pixels import fold_into_affine
from .tokens import check_input_kind, masked_mean, real_tokens, token_embedding, trim_padding

GRID = 2  # patches per side that ``patch_size: auto`` cuts an image into


def auto_patch_size(height: int, width: int) -> int:
    """``patch_size: auto``: a GRID x GRID grid of square patches (8x8 digits: 4; 28x28: 14). Sweeps
    on both sizes scored it best or tied, at a fraction of finer grids' cost (docs/models-and-training.md)."""
    return math.ceil(max(height, width) / GRID)


@dataclass(frozen=True)
class TransformerConfig:
    input_shape: tuple[int, ...]  # (C, H, W) of one image, or (T,) of one token sequence
    num_classes: int  # width of the logits
    patch_size: int | None = None  # images: side of a square patch; None: auto_patch_size (tokens: unused)
    d_model: int = 64  # embedding width
    num_heads: int = 8  # attention heads
    num_layers: int = 2  # encoder layers
    ff_size: int = 512  # feed-forward width
    dropout: float = 0.1  # dropout inside the encoder
    pool: Literal["mean", "cls"] = "mean"  # mean over positions or a learned class token
    vocab_size: int | None = None  # token input: the tokenizer's vocabulary size; None: images

    def __post_init__(self) -> None:
        check_input_kind("transformer", self.input_shape, self.vocab_size)

    @property
    def patch(self) -> int:
        """Side of an image patch: ``patch_size``, or the one the image's shape calls for."""
        _, height, width = self.input_shape
        return self.patch_size if self.patch_size is not None else auto_patch_size(height, width)

    @property
    def padded_hw(self) -> tuple[int, int]:
        """(H, W) after zero-padding to a multiple of the patch side."""
        _, height, width = self.input_shape
        p = self.patch
        return math.ceil(height / p) * p, math.ceil(width / p) * p

    @property
    def num_positions(self) -> int:
        """Sequence length fed to the encoder, class token excluded."""
        if self.vocab_size is not None:
            return self.input_shape[0]  # T: the longest sequence the data holds
        h, w = self.padded_hw
        return (h // self.patch) * (w // self.patch)


class TransformerClassifier(nn.Module):
    """A pre-norm transformer encoder over image patches or tokens."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        if config.vocab_size is not None:
            self.embed: nn.Module = token_embedding(config.vocab_size, config.d_model)
        else:
            channels = config.input_shape[0]
            self.embed = nn.Conv2d(channels, config.d_model, config.patch, stride=config.patch)
        extra = 1 if config.pool == "cls" else 0
        self.positions = nn.Parameter(torch.zeros(1, config.num_positions + extra, config.d_model))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model)) if extra else None
        nn.init.trunc_normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.num_heads,
            dim_feedforward=config.ff_size,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.num_classes)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> (B, T, d_model) embeddings without positions."""
        if self.config.vocab_size is not None:
            if x.shape[1] > self.config.num_positions:
                raise ValueError(
                    f"transformer: {x.shape[1]} tokens per sequence, but its position table holds "
                    f"{self.config.num_positions} (the prepared data's max_length)"
                )
            return self.embed(x)  # (B, T) ids -> (B, T, d_model)
        height, width = x.shape[-2:]
        pad_h, pad_w = self.config.padded_hw
        x = F.pad(x, (0, pad_w - width, 0, pad_h - height))  # (B, C, H', W'), multiples of p
        patches = self.embed(x)  # (B, d_model, H'/p, W'/p)
        return patches.flatten(2).transpose(1, 2)  # (B, T, d_model), T = H'W'/p^2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.vocab_size is not None:
            x = trim_padding(x)  # (B, T) -> (B, T'): columns of padding only cost attention
        tokens = self._tokens(x)  # (B, T, d_model)
        real = real_tokens(x) if self.config.vocab_size is not None else None  # (B, T) or None: images
        if self.cls_token is not None:
            cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, d_model)
            tokens = torch.cat([cls, tokens], dim=1)  # (B, 1+T, d_model)
            real = None if real is None else F.pad(real, (1, 0), value=True)  # (B, 1+T)
        tokens = tokens + self.positions[:, : tokens.shape[1]]
        padding = None if real is None else ~real  # (B, T'): True = ignored as a key
        encoded = self.norm(self.encoder(tokens, src_key_padding_mask=padding))  # (B, T', d_model)
        if self.cls_token is not None:
            pooled = encoded[:, 0]  # (B, d_model)
        else:
            pooled = encoded.mean(dim=1) if real is None else masked_mean(encoded, real)  # (B, d_model)
        return self.head(pooled)  # (B, num_classes)

    def fold_input_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> bool:
        """Make the patch projection take raw pixels (see :class:`RawPixelClassifier`).

        Only when the image needs no padding: the zeros padded in are zeros of the *normalised*
        image. Token input has nothing to fold. ``mean``, ``std``: ``(C,)`` per channel.
        """
        if self.config.vocab_size is not None or len(mean) != self.config.input_shape[0]:
            return False
        if self.config.padded_hw != tuple(self.config.input_shape[1:]):
            return False
        embed = self.embed
        assert isinstance(embed, nn.Conv2d)
        assert embed.bias is not None
        fold_into_affine(embed.weight, embed.bias, mean.view(-1, 1, 1), std.view(-1, 1, 1))  # (C, 1, 1)
        return True
