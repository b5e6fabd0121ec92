"""The compressed model folder ``models/<arch>-compressed/`` and its reader.

An accepted compression holds what a float model folder holds, the weights being the compressed
ones, plus ``compression.json``:

- ``weights.safetensors``  plain tensors only: int8 values, float scales, int64 zero points, float
                           biases (pruned layers: non-zero values and their int32 positions)
- ``compression.json``     method, quantised engine, ``layout`` (how each stored tensor goes back into
                           the quantised module, :mod:`components.compression.codec`), ``accepted``
- ``model.json``, ``stats.json``, ``train_info.json`` (and ``tokenizer.json`` for text): copied
  from ``models/<arch>/``, so the float architecture is rebuilt exactly as it was trained
- ``manifest.json``        the sha256 of every file above, checked by every reader

A rejected compression, or ``compress.method: none``, leaves only ``compression.json`` with
``"accepted": false`` (DVC needs the output to exist).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from components.atomic import dumps_json
from components.compression.codec import rebuild
from components.data.manifest import TOKENIZER, read_manifest, write_file_manifest
from components.errors import DataValidationError
from components.models import build_model
from components.training.artifacts import (
    MODEL_CARD,
    STATS,
    TRAIN_INFO,
    WEIGHTS,
    TrainedModel,
    read_json_object,
)

COMPRESSION = "compression.json"
STAGE = "compress"
FILES = (WEIGHTS, MODEL_CARD, STATS, TRAIN_INFO, COMPRESSION)


def compressed_folder(models_dir: Path | str, arch: str) -> Path:
    """``models/<arch>-compressed``: beside ``models/<arch>`` (DVC outputs may not overlap)."""
    return Path(models_dir) / f"{arch}-compressed"


def write_compressed(
    folder: Path, trained: TrainedModel, tensors: dict[str, torch.Tensor], card: dict[str, Any]
) -> None:
    """Write an accepted compressed model into ``folder`` (a fresh temporary folder)."""
    save_file(tensors, str(folder / WEIGHTS))
    for name in (MODEL_CARD, STATS, TRAIN_INFO):
        shutil.copyfile(trained.folder / name, folder / name)
    names = list(FILES)
    if (trained.folder / TOKENIZER).is_file():
        shutil.copyfile(trained.folder / TOKENIZER, folder / TOKENIZER)
        names.append(TOKENIZER)
    (folder / COMPRESSION).write_text(dumps_json(card), encoding="utf-8")
    write_file_manifest(folder, STAGE, names)


def write_marker(folder: Path, card: dict[str, Any]) -> None:
    """A folder saying no compressed model was kept, and why."""
    (folder / COMPRESSION).write_text(dumps_json(card), encoding="utf-8")


def read_card(folder: Path | str) -> dict[str, Any] | None:
    """``compression.json`` of ``folder``, or None when there is none."""
    path = Path(folder) / COMPRESSION
    return read_json_object(path) if path.is_file() else None


def is_accepted(folder: Path | str) -> bool:
    """Whether ``folder`` holds an accepted compressed model."""
    card = read_card(folder)
    return bool(card and card.get("accepted") is True)


@dataclass(frozen=True)
class CompressedModel:
    """A compressed model loaded back: the module and what feeds it, like a :class:`TrainedModel`."""

    trained: TrainedModel
    method: str

    @property
    def model(self) -> nn.Module:
        return self.trained.model


def load_compressed(folder: Path | str, float_model: TrainedModel) -> CompressedModel:
    """Rebuild the compressed model in ``folder`` over ``float_model``'s architecture (a fresh float
    network, the stored method applied, the stored tensors loaded); files checked first."""
    folder = Path(folder)
    read_manifest(folder, STAGE, required=FILES)
    card = read_card(folder) or {}
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise DataValidationError(folder / WEIGHTS, "is not a readable safetensors file", str(exc)) from None
    network = build_model(float_model.architecture, float_model.config)
    example = example_input(float_model)
    try:
        model = rebuild(network, str(card["method"]), card["layout"], tensors, example)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise DataValidationError(
            folder / COMPRESSION, "does not rebuild the compressed model", str(exc)
        ) from None
    trained = TrainedModel(
        float_model.architecture, float_model.config, model, float_model.stats, float_model.info, folder
    )
    return CompressedModel(trained, str(card["method"]))


def example_input(trained: TrainedModel) -> torch.Tensor:
    """One all-zero input of the model's shape: (1, C, H, W) float, or (1, T) token ids."""
    shape = tuple(trained.config.input_shape)
    dtype = torch.float32 if trained.config.vocab_size is None else torch.int64
    return torch.zeros((1, *shape), dtype=dtype)
