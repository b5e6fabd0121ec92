"""The MLflow ``pyfunc`` wrapper of a registered classifier (logged as "models from code").

MLflow copies this file into the model and runs it at load time (no cloudpickle). It imports only
torch, numpy, pandas and MLflow, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work
without this project installed. Artifacts it reads:

- ``program``: the ``torch.export`` archive (raw pixels -> probabilities, normalisation inside)
- ``meta``: JSON with ``class_names`` (index = class id) and ``image_shape`` (C, H, W)

Input: raw pixels, ``(N, C, H, W)`` float32 (the signature's tensor spec; over REST,
``{"inputs": [...]}``). Output: a DataFrame with ``class_id``,
``class_name``, ``probability`` (of the predicted class) and ``prob_<class name>`` per class.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel


class RegisteredClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        program = torch.export.load(context.artifacts["program"])
        self.module = program.module()
        with open(context.artifacts["meta"], encoding="utf-8") as handle:
            meta = json.load(handle)
        self.class_names: list[str] = list(meta["class_names"])
        self.image_shape: list[int] = list(meta["image_shape"])
        self.names = np.asarray(self.class_names, dtype=object)  # class id -> name, for fancy indexing
        self.prob_columns = [f"prob_{name}" for name in self.class_names]

    # No type hints on predict: MLflow would try to infer a signature from them.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        pixels = np.asarray(model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input)
        pixels = pixels.astype(np.float32, copy=False).reshape(-1, *self.image_shape)  # (N, C, H, W)
        with torch.no_grad():
            probabilities = self.module(torch.from_numpy(pixels)).numpy()  # (N, K)
        class_ids = probabilities.argmax(axis=1)  # (N,)
        # One DataFrame from whole columns: inserting columns one by one costs more than the model.
        columns = {
            "class_id": class_ids.astype(np.int64),
            "class_name": self.names[class_ids],
            "probability": probabilities[np.arange(len(class_ids)), class_ids],
            **dict(zip(self.prob_columns, probabilities.T, strict=True)),
        }
        return pd.DataFrame(columns, copy=False)


mlflow.models.set_model(RegisteredClassifier())
