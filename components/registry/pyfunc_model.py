"""The MLflow ``pyfunc`` wrapper of a registered classifier (logged as "models from code").

MLflow copies this file into the model and runs it at load time (no cloudpickle). It imports only
torch, safetensors, numpy, pandas and MLflow, so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` work without this project installed. Artifacts it reads, all copied from
the train stage's ``models/<arch>/`` and the project at registration:

- ``networks``: a copy of ``components/models/`` (the architectures, torch only), imported under a
  name unique to its content, so models registered from different code load side by side
- ``card`` (``model.json``): the architecture and its config
- ``weights`` (``weights.safetensors``): the trained tensors (no pickle: nothing executable)
- ``stats`` (``stats.json``): the normalisation, ``class_names`` (index = class id), ``image_shape``
  and the training split's raw pixel range
- ``manifest`` (``manifest.json``): the sha256 the train stage recorded for those files; a model
  whose files do not match it is refused at load time (:func:`verify_artifacts`), so a corrupted
  weights file is never served

The network runs eagerly, as in training, so PyTorch's fused inference kernels (the transformer
encoder's fast path, the LSTM's) apply; a ``torch.export`` graph loses them. It runs on the device
that ``model_config={"device": ...}`` names at load time: ``auto`` (the default: the first CUDA
device when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:<n>``.

Inputs on another scale than the training split's raw pixels (0..255 for a model trained on the
digits' 0..16) are refused with an ``INVALID_PARAMETER_VALUE`` error (over REST a 400 naming the
rule and the range), the check batch prediction applies (``pixel_range_problem`` in the shipped
architecture code); ``model_config={"check_pixel_range": False}`` turns it off. Versions whose data
recorded no pixel range are not checked.

Input: raw pixels, ``(N, C, H, W)`` float32 (the signature's tensor spec; over REST,
``{"inputs": [...]}``). Output: a DataFrame with ``class_id``, ``class_name`` (categorical: its
codes are the class ids), ``probability`` (of the predicted class) and ``prob_<class name>`` per
class.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
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


def import_networks(folder: str | Path) -> ModuleType:
    """Import the architecture package in ``folder`` as ``_registered_networks_<sha256 prefix>``.

    A content-derived name, not ``sys.path``: two models whose architecture code differs (a
    champion registered by older code) each get their own classes in one process.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.py")):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    name = f"_registered_networks_{digest.hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"{folder}: not an importable package")
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
    for key, name in CHECKED_ARTIFACTS.items():
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


class RegisteredClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        verify_artifacts(context.artifacts)
        networks = import_networks(context.artifacts["networks"])
        card = _read_json(context.artifacts["card"])
        stats = _read_json(context.artifacts["stats"])
        architecture = card["architecture"]
        network = networks.build_model(architecture, networks.config_from_dict(architecture, card["config"]))
        network.load_state_dict(load_file(context.artifacts["weights"]))
        self.device = networks.inference_device(getattr(context, "model_config", None))
        module = networks.RawPixelClassifier(network, stats["mean"], stats["std"], fold_normalisation=True)
        self.module = module.to(self.device).eval()
        self.class_names: list[str] = list(stats["class_names"])
        self.image_shape: list[int] = list(stats["image_shape"])
        # Per-channel raw pixel range of the training split; None for data prepared before it was
        # recorded (then nothing is checked). Batch prediction reads these too, to name the file.
        self.pixel_min: list[float] | None = stats.get("pixel_min")
        self.pixel_max: list[float] | None = stats.get("pixel_max")
        self.check_range = _check_range_setting(getattr(context, "model_config", None))
        self.range_problem = networks.pixel_range_problem
        # class_name is categorical: its codes are the class ids, so no string is built per row.
        self.name_dtype = pd.CategoricalDtype(self.class_names)
        self.prob_columns = [f"prob_{name}" for name in self.class_names]

    # ``np.ndarray`` is one of the input hints MLflow neither validates nor infers a signature from
    # (the logged tensor signature does both); without a hint, every load warned "Add type hints".
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        pixels = np.asarray(model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input)
        pixels = pixels.astype(np.float32, copy=False).reshape(-1, *self.image_shape)  # (N, C, H, W)
        self._check_range(pixels)
        with torch.inference_mode():
            probabilities = self.module(torch.from_numpy(pixels).to(self.device)).cpu()  # (N, K)
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
