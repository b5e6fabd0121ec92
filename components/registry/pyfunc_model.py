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

The network runs eagerly, as in training, so PyTorch's fused inference kernels (the transformer
encoder's fast path, the LSTM's) apply; a ``torch.export`` graph loses them. It runs on the device
that ``model_config={"device": ...}`` names at load time: ``auto`` (the default: the first CUDA
device when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:<n>``.

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
from mlflow.pyfunc import PythonModel
from safetensors.torch import load_file


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


class RegisteredClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
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
        # recorded. The wrapper takes any values (as a serving endpoint must); batch prediction
        # (components/registry/predict.py) reads these to refuse inputs on another scale.
        self.pixel_min: list[float] | None = stats.get("pixel_min")
        self.pixel_max: list[float] | None = stats.get("pixel_max")
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


mlflow.models.set_model(RegisteredClassifier())
