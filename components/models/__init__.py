"""The four architectures, each a plain ``nn.Module`` with a config dataclass.

:func:`model_config` turns ``params.yaml`` ``models.<arch>`` plus the data's shape into the
architecture's config; :func:`build_model` turns a config (or its saved dict) into the module.

This package imports only torch, and its modules import each other relatively: the registry ships
a copy of it inside every registered model (see :mod:`components.registry.pyfunc_model`), where it
is loaded under another name, without this project installed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from .cnn import CNNConfig, choose_padding
from .cnn_text import build_cnn
from .lstm import LSTMClassifier, LSTMConfig
from .mlp import MLP, MLPConfig
from .raw_pixels import RawPixelClassifier, class_probabilities, inference_device, pixel_range_problem
from .tokens import PAD_ID
from .transformer import TransformerClassifier, TransformerConfig, auto_patch_size

if TYPE_CHECKING:  # annotations only: a registered model's copy of this package has no params module
    from components.config import Architecture, ModelsParams

__all__ = [
    "FROM_DATA",
    "PAD_ID",
    "REGISTRY",
    "ModelConfig",
    "RawPixelClassifier",
    "build_model",
    "class_probabilities",
    "config_from_dict",
    "config_to_dict",
    "count_parameters",
    "inference_device",
    "model_config",
    "pixel_range_problem",
]

ModelConfig = MLPConfig | CNNConfig | LSTMConfig | TransformerConfig

# Per architecture: its config dataclass and what builds the module from a config.
REGISTRY: dict[str, tuple[type[Any], Callable[[Any], nn.Module]]] = {
    "mlp": (MLPConfig, MLP),
    "cnn": (CNNConfig, build_cnn),
    "lstm": (LSTMConfig, LSTMClassifier),
    "transformer": (TransformerConfig, TransformerClassifier),
}

# Config fields that come from the prepared data, not from params.yaml.
FROM_DATA = frozenset({"input_shape", "num_classes", "vocab_size"})
# Keys that old model.json files may hold and configs no longer have (the position table's size
# now comes from the data's sequence length).
_RETIRED = frozenset({"max_seq_len"})


def model_config(
    arch: Architecture,
    models: ModelsParams,
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int | None = None,
) -> ModelConfig:
    """The config of ``arch`` from its ``models.<arch>`` section and the prepared data: images'
    (C, H, W), or token input's (T,) and the tokenizer's ``vocab_size``."""
    config_cls, _ = REGISTRY[arch]
    section = getattr(models, arch).model_dump()
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in section.items()}
    fields.update(resolve_auto(fields, tuple(input_shape)))
    config: ModelConfig = config_cls(
        input_shape=tuple(input_shape), num_classes=num_classes, vocab_size=vocab_size, **fields
    )
    return config


def resolve_auto(fields: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The value each ``auto`` setting takes for this input shape, so that model.json records
    it. Token input: None (these keys shape images only)."""
    image = len(input_shape) == 3
    height, width = input_shape[1:] if image else (0, 0)
    resolved: dict[str, Any] = {}
    if fields.get("patch_size") == "auto":
        resolved["patch_size"] = auto_patch_size(height, width) if image else None
    if fields.get("padding") == "auto":
        resolved["padding"] = choose_padding(height, width, len(fields["channels"])) if image else None
    return resolved


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """JSON-ready form of a config (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(arch: str, data: dict[str, Any]) -> ModelConfig:
    """Inverse of :func:`config_to_dict`."""
    if arch not in REGISTRY:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(REGISTRY)})")
    config_cls, _ = REGISTRY[arch]
    fields = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in data.items()
        if key not in _RETIRED
    }
    config: ModelConfig = config_cls(**fields)
    return config


def build_model(arch: str, config: ModelConfig) -> nn.Module:
    """Instantiate ``arch`` from its config."""
    _, build = REGISTRY[arch]
    model: nn.Module = build(config)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
