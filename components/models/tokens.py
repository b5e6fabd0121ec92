"""Token input shared by the four architectures: ids (B, T), right-padded with ``PAD_ID``.

The padding mask comes from the ids themselves (no lengths tensor travels with a batch), and every
architecture reads only real positions, so the same text padded to any length gets the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PAD_ID = 0  # [PAD]: the id right-padding uses, and the embedding row kept at zero
MIN_VOCAB = 2  # [PAD] and [UNK] at least


def token_embedding(vocab_size: int, width: int) -> nn.Embedding:
    """An embedding whose ``PAD_ID`` row starts at zero and never gets a gradient."""
    return nn.Embedding(vocab_size, width, padding_idx=PAD_ID)


def real_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B, T) bool, True at real tokens.

    Position 0 always counts: an empty text (all padding) is then read as one [PAD] token instead
    of leaving nothing to pool over (no NaN from an empty mean or a fully masked attention row).
    """
    real = x != PAD_ID
    real[:, 0] = True
    return real


def trim_padding(x: torch.Tensor) -> torch.Tensor:
    """(B, T) right-padded ids -> (B, T') without the columns that are padding in every row.

    Exact for a model whose output padding cannot change (all of them here), and on data of short
    texts padded to a long ``max_length`` most of the work. One host sync per batch.
    """
    longest = int(real_tokens(x).sum(dim=1).max())
    return x[:, :longest]


def masked_mean(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, T, D) over the positions where ``real`` (B, T) is True -> (B, D)."""
    weights = real.unsqueeze(-1).to(values.dtype)  # (B, T, 1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1)


def check_input_kind(
    arch: str, input_shape: Sequence[int], vocab_size: int | None, image_rank: int | None = 3
) -> None:
    """Token input (``vocab_size`` set, from the prepared data's tokenizer) needs a (T,) shape and
    a vocabulary beyond [PAD]; images need ``image_rank`` dims ((C, H, W); None: any shape).

    Raised when the config is built, instead of an embedding lookup failing on float pixels (or a
    reshape on ids) in the first training step.
    """
    shape = tuple(input_shape)
    if vocab_size is None:
        if image_rank is not None and len(shape) != image_rank:
            raise ValueError(
                f"{arch}: image input must be (C, H, W), got {shape}; token sequences need the "
                "vocab_size of the prepared data's tokenizer"
            )
        return
    if len(shape) != 1 or shape[0] < 1:
        images = "x".join(map(str, shape))
        raise ValueError(
            f"{arch}: token input (vocab_size {vocab_size}) needs input_shape (T,), got {images}"
        )
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"{arch}: vocab_size {vocab_size} leaves no token besides [PAD] (need >= {MIN_VOCAB})"
        )
