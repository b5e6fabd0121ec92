"""What a sequence model's config says about its input: images (C, H, W) or token ids (T,)."""

from __future__ import annotations

from collections.abc import Sequence


def check_input_kind(arch: str, input_shape: Sequence[int], vocab_size: int | None) -> None:
    """Refuse a ``vocab_size`` (token input) on images, and images' shape for token input.

    Raised when the config is built, naming the ``models.<arch>`` key, instead of an embedding
    lookup failing on float pixels in the first training step.
    """
    tokens = vocab_size is not None
    if tokens and len(input_shape) != 1:
        raise ValueError(
            f"models.{arch}.vocab_size: {vocab_size} asks for token input (sequences of integer ids), "
            f"but the data are {'x'.join(map(str, input_shape))} images; set it to null"
        )
    if not tokens and len(input_shape) != 3:
        raise ValueError(
            f"{arch}: image input must be (C, H, W), got {tuple(input_shape)}; "
            f"token sequences need models.{arch}.vocab_size"
        )
