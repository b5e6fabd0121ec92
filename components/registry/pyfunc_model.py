"""The MLflow ``pyfunc`` wrapper of a registered classifier (logged as "models from code").

MLflow copies this file into the model and runs it at load time (no cloudpickle). It imports only
torch, safetensors, numpy, pandas and MLflow (a text model's shipped encoding: tokenizers), so
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work without this project installed.
Artifacts it reads, all copied from the train stage's ``models/<arch>/`` and the project at
registration:

- ``networks``: a copy of ``components/models/`` (the architectures, torch only), imported under a
  name unique to its content, so models registered from different code load side by side
- ``card`` (``model.json``): the architecture and its config
- ``weights`` (``weights.safetensors``): the trained tensors (no pickle: nothing executable)
- ``stats`` (``stats.json``): the normalisation, ``class_names`` (index = class id), ``image_shape``
  and the training split's raw pixel range
- ``manifest`` (``manifest.json``): the sha256 the train stage recorded for those files; a model
  whose files do not match it is refused at load time (:func:`verify_artifacts`), so a corrupted
  weights file is never served
- text models only: ``tokenizer`` (``tokenizer.json``, checked against the manifest too) and
  ``encoding``, a copy of ``components/data/tokenize.py`` (tokenizers and NumPy only): the one
  function preprocessing encoded the training texts with, imported like the architectures

The network runs eagerly, as in training (PyTorch's fused inference kernels apply; a
``torch.export`` graph loses them), on the device ``model_config={"device": ...}`` names: ``auto``
(a CUDA device when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:<n>``.

Inputs on another scale than the training split's raw pixels (0..255 for a model trained on the
digits' 0..16) are refused with an ``INVALID_PARAMETER_VALUE`` error (over REST a 400 naming the
rule and the range), the check batch prediction applies (``pixel_range_problem`` in the shipped
architecture code); ``model_config={"check_pixel_range": False}`` turns it off. Versions whose data
recorded no pixel range are not checked.

Input: raw pixels, ``(N, C, H, W)`` float32 (the signature's tensor spec; over REST,
``{"inputs": [...]}``); for a text model, raw strings: a DataFrame with a ``text`` string column
(the signature's), also a Series or a list of strings, each encoded and cut to ``max_length`` tokens
as preprocessing did. An empty (or whitespace-only) text or a value that is not a string is refused
with ``INVALID_PARAMETER_VALUE`` naming the row, the rule ingestion applies. Output: a DataFrame
with ``class_id``, ``class_name`` (categorical: its codes are the class ids), ``probability`` (of
the predicted class) and ``prob_<class name>`` per class.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import reprlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from safetensors.torch import load_file

# Artifacts checked against the manifest, by the name the train stage gave the file.
CHECKED_ARTIFACTS = {"card": "model.json", "weights": "weights.safetensors", "stats": "stats.json"}
TEXT_ARTIFACTS = {"tokenizer": "tokenizer.json"}  # checked too when the model takes text
COMPRESSED_ARTIFACTS = {"compression": "compression.json"}  # checked too for a compressed model
TEXT_COLUMN = "text"  # the signature's one input column of a text model


def import_networks(folder: str | Path) -> ModuleType:
    """Import the architecture package in ``folder`` as ``_registered_networks_<sha256 prefix>``.

    A content-derived name, not ``sys.path``: two models whose architecture code differs (a
    champion registered by older code) each get their own classes in one process.
    """
    folder = Path(folder)
    return _import_unique(sorted(folder.glob("*.py")), "networks", folder / "__init__.py", folder)


def import_encoding(file: str | Path) -> ModuleType:
    """Import the shipped copy of ``components/data/tokenize.py`` as ``_registered_encoding_<sha>``."""
    return _import_unique([Path(file)], "encoding", Path(file), None)


def _import_unique(files: list[Path], kind: str, entry: Path, package: Path | None) -> ModuleType:
    """Import ``entry`` (a package's ``__init__.py`` when ``package`` is given) under a name derived
    from the content of ``files``, once per process."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    name = f"_registered_{kind}_{digest.hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    locations = [str(package)] if package is not None else None
    spec = importlib.util.spec_from_file_location(name, entry, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise ImportError(f"{entry}: not importable")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:  # leave no half-imported package (or submodule) to be found next time
        for key in [k for k in sys.modules if k == name or k.startswith(f"{name}.")]:
            del sys.modules[key]
        raise
    return module


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def verify_artifacts(artifacts: dict[str, str]) -> None:
    """Refuse artifact files whose sha256 differs from what the train stage recorded in the model
    folder's manifest (this file runs without the project, so the check is its own few lines)."""
    files = _read_json(artifacts["manifest"]).get("files") or {}
    text = _read_json(artifacts["stats"]).get("kind") == "text"
    compressed = COMPRESSED_ARTIFACTS if "compression" in artifacts else {}
    for key, name in {**CHECKED_ARTIFACTS, **(TEXT_ARTIFACTS if text else {}), **compressed}.items():
        if key not in artifacts:
            raise ValueError(f"the model has no {key} artifact ({name}), which a text model needs")
        digest = hashlib.sha256()
        with open(artifacts[key], "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != files.get(name):
            raise ValueError(
                f"{artifacts[key]}: sha256 does not match the model folder's manifest "
                f"({artifacts['manifest']}): the file changed after training; register a good model again"
            )


def _check_range_setting(model_config: dict[str, Any] | None) -> bool:
    """``model_config["check_pixel_range"]`` (default on), which must be a boolean."""
    value = (model_config or {}).get("check_pixel_range", True)
    if not isinstance(value, bool):
        raise ValueError(f"model_config['check_pixel_range'] = {value!r}: expected true or false")
    return value


def texts_of(model_input: Any) -> list[str]:
    """The strings of a text model's input: a DataFrame's ``text`` column, a Series, a list or an
    array of strings. An empty input, a blank text or a value that is not a string is refused as an
    invalid parameter (a 400 over REST) naming the first such row, counted from 0."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise MlflowException.invalid_parameter_value(
                f"expected a column {TEXT_COLUMN!r} of strings; the input has columns "
                f"{[str(c) for c in model_input.columns]}"
            )
        values = model_input[TEXT_COLUMN].tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        values = np.asarray(model_input, dtype=object).reshape(-1).tolist()
    else:
        raise MlflowException.invalid_parameter_value(
            f"expected a DataFrame with a {TEXT_COLUMN!r} column or a list of strings, "
            f"got {type(model_input).__name__}"
        )
    if not values:
        raise MlflowException.invalid_parameter_value("no texts to predict on")
    for row, value in enumerate(values):
        problem = _text_problem(value)
        if problem is not None:
            raise MlflowException.invalid_parameter_value(
                f"input row {row} (counting from 0): {problem}; every row needs a non-blank string "
                f"in column {TEXT_COLUMN!r}"
            )
    return values


def _text_problem(value: Any) -> str | None:
    """Why ``value`` is not a text the model takes (ingestion's rules), or None."""
    if not isinstance(value, str):
        return f"missing or not a string (got {type(value).__name__} {reprlib.repr(value)})"
    if not value.strip():
        return "empty text (empty or whitespace only)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape
        return f"text is not valid Unicode ({exc.reason})"
    return None


class RegisteredClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        verify_artifacts(context.artifacts)
        networks = import_networks(context.artifacts["networks"])
        card = _read_json(context.artifacts["card"])
        stats = _read_json(context.artifacts["stats"])
        architecture = card["architecture"]
        network = networks.build_model(architecture, networks.config_from_dict(architecture, card["config"]))
        model_config = getattr(context, "model_config", None)
        self.device = networks.inference_device(model_config)
        compressed = "compression" in context.artifacts
        if compressed:
            network = self._compressed(context.artifacts, network, card)
        else:
            network.load_state_dict(load_file(context.artifacts["weights"]))
        self.class_names: list[str] = list(stats["class_names"])
        # class_name is categorical: its codes are the class ids, so no string is built per row.
        self.name_dtype = pd.CategoricalDtype(self.class_names)
        self.prob_columns = [f"prob_{name}" for name in self.class_names]
        self.encoding: ModuleType | None = None  # text models: the shipped tokenize.py
        if stats.get("kind") == "text":
            self._load_text(context.artifacts, stats, network, networks)
        else:
            self._load_images(stats, network, networks, model_config, fold=not compressed)

    def _compressed(self, artifacts: dict[str, str], network: torch.nn.Module, card: dict[str, Any]) -> Any:
        """The compressed network: the float one given the stored method's structure and the stored
        int8 tensors (the shipped ``codec``, torch only: nothing unpickled). Int8 kernels are CPU ones."""
        codec = _import_unique([Path(artifacts["codec"])], "codec", Path(artifacts["codec"]), None)
        compression = _read_json(artifacts["compression"])
        shape = card["config"]["input_shape"]
        text = card["config"].get("vocab_size") is not None
        example = torch.zeros((1, *shape), dtype=torch.int64 if text else torch.float32)
        self.device = torch.device("cpu")
        tensors = load_file(artifacts["weights"])
        return codec.rebuild(network, compression["method"], compression["layout"], tensors, example)

    def _load_images(
        self,
        stats: dict[str, Any],
        network: torch.nn.Module,
        networks: ModuleType,
        model_config: Any,
        *,
        fold: bool = True,
    ) -> None:
        # A quantised first layer cannot absorb the normalisation (fold): its weights are int8.
        module = networks.RawPixelClassifier(network, stats["mean"], stats["std"], fold_normalisation=fold)
        self.module = module.to(self.device).eval()
        self.image_shape: list[int] = list(stats["image_shape"])
        # Per-channel raw pixel range of the training split; None for data prepared before it was
        # recorded (then nothing is checked). Batch prediction reads these too, to name the file.
        self.pixel_min: list[float] | None = stats.get("pixel_min")
        self.pixel_max: list[float] | None = stats.get("pixel_max")
        self.check_range = _check_range_setting(model_config)
        self.range_problem = networks.pixel_range_problem

    def _load_text(
        self, artifacts: dict[str, str], stats: dict[str, Any], network: torch.nn.Module, networks: ModuleType
    ) -> None:
        self.encoding = import_encoding(artifacts["encoding"])
        self.tokenizer = self.encoding.load_tokenizer(artifacts["tokenizer"])
        self.max_length = int(stats["max_length"])
        self.module = network.to(self.device).eval()
        self.softmax = networks.class_probabilities

    # ``np.ndarray`` is one of the input hints MLflow neither validates nor infers a signature from
    # (the logged signature does both); without a hint, every load warned "Add type hints".
    # A text model gets the DataFrame MLflow made of the input (see :func:`texts_of`).
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        with torch.inference_mode():
            if self.encoding is not None:
                probabilities = self._text_probabilities(texts_of(model_input))
            else:
                probabilities = self._pixel_probabilities(model_input)
            top, class_ids = probabilities.max(dim=1)  # (N,) probability and id of each row's class
        ids = class_ids.numpy()
        # One DataFrame from whole columns: inserting columns one by one costs more than the model.
        columns = {
            "class_id": ids,
            "class_name": pd.Categorical.from_codes(ids, dtype=self.name_dtype),
            "probability": top.numpy(),
            **dict(zip(self.prob_columns, probabilities.numpy().T, strict=True)),
        }
        return pd.DataFrame(columns, copy=False)

    def _pixel_probabilities(self, model_input: Any) -> torch.Tensor:
        """Raw pixels -> (N, K) class probabilities, after the range check."""
        pixels = np.asarray(model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input)
        pixels = pixels.astype(np.float32, copy=False).reshape(-1, *self.image_shape)  # (N, C, H, W)
        self._check_range(pixels)
        return self.module(torch.from_numpy(pixels).to(self.device)).cpu()  # (N, K)

    def _text_probabilities(self, texts: list[str]) -> torch.Tensor:
        """Raw strings -> (N, K) class probabilities: encoded as preprocessing encoded them."""
        assert self.encoding is not None
        ids, _ = self.encoding.encode(self.tokenizer, texts, self.max_length)  # (N, L) int64
        logits = self.module(torch.from_numpy(ids).to(self.device))  # (N, K)
        return self.softmax(logits).cpu()  # (N, K)

    def _check_range(self, pixels: np.ndarray) -> None:
        """Refuse inputs on another scale than the training pixels' (an invalid parameter: a 400)."""
        if not self.check_range or self.pixel_min is None or self.pixel_max is None:
            return
        problem = self.range_problem(pixels, self.pixel_min, self.pixel_max)
        if problem is not None:
            rule, detail = problem
            raise MlflowException.invalid_parameter_value(
                f"{rule} ({detail}); rescale the inputs to that range, or load the model with "
                'model_config={"check_pixel_range": false} to predict on them anyway'
            )


mlflow.models.set_model(RegisteredClassifier())
