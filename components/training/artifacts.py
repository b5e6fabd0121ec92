"""The train stage's output folder ``models/<arch>/`` and its reader.

Contents (the contract with evaluation and registration):

- ``weights.safetensors``  the network's ``state_dict`` (tensors only: nothing executable to load)
- ``model.json``           architecture name and its config dataclass, enough to rebuild the network
- ``stats.json``           the normalisation and class names of the data it was trained on
- ``train_info.json``      epochs, steps, timings, sizes, data version, MLflow run, per-epoch history
- ``manifest.json``        the sha256 of the four files above, written last; every reader checks it
                           (:func:`verify_model_folder`), so a corrupted or edited file is refused
                           by name instead of being scored, registered or served
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from components.atomic import dumps_json
from components.data.manifest import MANIFEST, TOKENIZER, read_manifest, write_file_manifest
from components.data.normalize import Normalization
from components.data.prepared import PreparedData, data_version
from components.data.text_stats import TextStats
from components.errors import DataValidationError, is_no_space
from components.models import ModelConfig, build_model, config_from_dict, config_to_dict

WEIGHTS = "weights.safetensors"
MODEL_CARD = "model.json"
STATS = "stats.json"
TRAIN_INFO = "train_info.json"
MODEL_FILES = (WEIGHTS, MODEL_CARD, STATS, TRAIN_INFO)
"""The files of every model folder that its manifest lists (``manifest.json`` itself aside); a text
model's folder also holds ``tokenizer.json``, listed too."""
Stats = Normalization | TextStats


@dataclass(frozen=True)
class TrainedModel:
    """A trained network (in eval mode) with what is needed to feed it and read it."""

    architecture: str
    config: ModelConfig
    model: nn.Module
    stats: Stats
    info: dict[str, Any]
    folder: Path

    @property
    def tokenizer(self) -> Path | None:
        """Text: the tokenizer the model was trained with; ``None`` for images."""
        return self.folder / TOKENIZER if isinstance(self.stats, TextStats) else None


def write_model_folder(
    folder: Path,
    architecture: str,
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    stats: Stats,
    info: dict[str, Any],
    *,
    tokenizer: Path | None = None,
) -> None:
    """Write the four files (five with a text model's ``tokenizer``, copied) and their manifest into
    ``folder`` (a temporary folder that is then renamed into place)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    try:
        save_file(tensors, str(folder / WEIGHTS))
    except SafetensorError as exc:  # a message only ("... No space left on device ..."): the errno back
        if not is_no_space(exc):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / WEIGHTS)) from exc
    card = {"architecture": architecture, "config": config_to_dict(config)}
    (folder / MODEL_CARD).write_text(dumps_json(card), encoding="utf-8")
    (folder / STATS).write_text(stats.to_json(), encoding="utf-8")
    (folder / TRAIN_INFO).write_text(dumps_json(info), encoding="utf-8")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, folder / TOKENIZER)
    write_model_manifest(folder)


def write_model_manifest(folder: Path | str) -> None:
    """Record the sha256 of the model folder's files in its ``manifest.json`` (after they are written)."""
    folder = Path(folder)
    extra = (TOKENIZER,) if (folder / TOKENIZER).is_file() else ()
    write_file_manifest(folder, "train", (*MODEL_FILES, *extra))


def verify_model_folder(folder: Path | str) -> None:
    """Check every file of ``folder`` against its ``manifest.json``: a corrupted weights file or an
    edited card is refused naming the file, and so is a folder written before models had a manifest."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        if not (folder / MODEL_CARD).is_file():  # nothing trained here at all
            raise DataValidationError(folder / MODEL_CARD, "missing (run the train stage first)")
        raise DataValidationError(
            folder / MANIFEST,
            "missing: the model folder records no sha256 of its files (written by older code, or not "
            f"by the train stage); re-run train@{_architecture_hint(folder)} to write it again",
        )
    read_manifest(folder, "train", required=MODEL_FILES)


def _architecture_hint(folder: Path) -> str:
    """The architecture ``folder``'s card names, for a message only; else the folder's name."""
    try:
        return str(json.loads((folder / MODEL_CARD).read_text(encoding="utf-8"))["architecture"])
    except (OSError, ValueError, KeyError, TypeError):
        return folder.name


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (layout-independent: NHWC = NCHW).

    Equal digests mean bit-identical weights; DDP ranks compare theirs at the end of training.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unreadable or non-object file is a DataValidationError."""
    if not path.is_file():
        raise DataValidationError(path, "missing (run the train stage first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(path, "is not valid JSON", str(exc)) from None
    if not isinstance(data, dict):
        raise DataValidationError(path, "must hold a JSON object")
    return data


class MlflowRunRecord(BaseModel):
    """``train_info.json``'s ``mlflow``: the run that trained the model (evaluate adds to it)."""

    model_config = ConfigDict(extra="allow")
    run_id: str | None = None
    parent_run_id: str | None = None


class TrainInfoContract(BaseModel):
    """The keys of ``train_info.json`` that evaluation, registration, the launcher and the summary
    read. The file holds more (timings, history, digests), all of it kept as written."""

    model_config = ConfigDict(extra="allow")
    data_version: str
    parameters: int = Field(ge=0)
    epochs: int = Field(ge=0)
    fit_seconds: float = Field(ge=0, allow_inf_nan=False)
    mlflow: MlflowRunRecord | None = None


def read_train_info(path: Path | str) -> dict[str, Any]:
    """``train_info.json`` as written by the train stage, after checking the keys read downstream.

    A hand-edited or truncated file is refused naming the file and the key (not an
    ``AttributeError`` halfway through evaluation, after its reports were written).
    """
    path = Path(path)
    info = read_json_object(path)
    try:
        TrainInfoContract.model_validate(info)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise DataValidationError(path, "must hold what the train stage wrote", problems) from None
    return info


def load_trained_model(folder: Path | str, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the network from ``folder`` and load its weights, after checking its files against the
    folder's manifest (:func:`verify_model_folder`); errors name the file and the rule."""
    folder = Path(folder)
    verify_model_folder(folder)
    card = read_json_object(folder / MODEL_CARD)
    try:
        architecture = str(card["architecture"])
        config = config_from_dict(architecture, card["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataValidationError(
            folder / MODEL_CARD, "must name a known architecture and its config", str(exc)
        ) from None
    try:
        raw_stats = read_json_object(folder / STATS)
        stats: Stats = (
            TextStats.from_dict(raw_stats)
            if raw_stats.get("kind") == "text"
            else Normalization.from_dict(raw_stats)
        )
        if isinstance(stats, TextStats):
            read_manifest(folder, "train", required=(TOKENIZER,))
    except TypeError as exc:
        raise DataValidationError(
            folder / STATS, "must hold the normalisation written by preprocess", str(exc)
        ) from None
    info = read_train_info(folder / TRAIN_INFO)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise DataValidationError(weights, "missing (run the train stage first)")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise DataValidationError(weights, "is not a readable safetensors file", str(exc)) from None
    try:
        model = build_model(architecture, config).to(device)
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:  # e.g. "hidden_sizes": "abc"
        raise DataValidationError(
            folder / MODEL_CARD, f"holds a {architecture} config that does not build", str(exc)
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataValidationError(
            weights, f"tensors do not fit the {architecture} in {MODEL_CARD}", str(exc)
        ) from None
    model.eval()
    return TrainedModel(architecture, config, model, stats, info, folder)


def check_same_data(trained: TrainedModel, prepared: PreparedData, prepared_dir: Path, hint: str = "") -> str:
    """The prepared data's version, after checking ``trained`` was trained on exactly that data.

    A model is only evaluated or registered on the test split of the data it was trained on (a
    different split could hold its training images). ``hint`` is appended to the error.
    """
    version = data_version(prepared_dir)
    if trained.info.get("data_version") != version:
        raise DataValidationError(
            trained.folder,
            f"was trained on data version {trained.info.get('data_version')}, but {prepared_dir} is {version}"
            + (f"; {hint}" if hint else ""),
        )
    if trained.stats.class_names != prepared.stats.class_names:
        raise DataValidationError(trained.folder, "class names differ from the prepared data's")
    return version
