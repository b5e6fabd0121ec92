"""Judging a registered version: its score on the test split through the registered model, and
whether a champion that failed to score could have been judged at all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from components.data.normalize import Normalization
from components.data.prepared import PreparedSplit
from components.data.text_stats import TextStats
from components.errors import DataValidationError, PipelineError, is_transient
from components.evaluation.metrics import classification_metrics
from components.registry.package import TEXT_COLUMN

CHAMPION = "champion"
CHALLENGER = "challenger"


Inputs: TypeAlias = np.ndarray | pd.DataFrame
"""Raw test inputs: (N, C, H, W) float32 pixels, or a DataFrame with a ``text`` column of N strings."""


def score(model_uri: str, inputs: Inputs, labels: np.ndarray, metric: str, class_names: list[str]) -> float:
    """``metric`` (``test_accuracy`` or ``test_f1_macro``) of the registered model at ``model_uri``."""
    model = mlflow.pyfunc.load_model(model_uri)
    predicted = model.predict(inputs)["class_id"].to_numpy()
    summary, _ = classification_metrics(labels, predicted, class_names)
    return float(summary[metric.removeprefix("test_")])


class RegistrationError(PipelineError):
    """A model version could not be judged against the champion; nothing about the alias changed."""


def input_mismatch(model_uri: str, inputs: Inputs, class_names: Sequence[str]) -> str | None:
    """Why the registered model at ``model_uri`` cannot be judged on ``inputs`` with these classes
    (texts against images, another image shape, other classes), read from its signature; ``None``
    when it can."""
    logged = mlflow.models.get_model_info(model_uri).signature
    if logged is None or logged.inputs is None or logged.outputs is None:
        return "it was logged without a signature"
    takes_texts = not logged.inputs.is_tensor_spec()
    if takes_texts != isinstance(inputs, pd.DataFrame):
        model_kind, data_kind = ("texts", "images") if takes_texts else ("images", "texts")
        return f"it takes {model_kind}, this data has {data_kind}"
    if not takes_texts:
        shape = list(logged.inputs.inputs[0].shape[1:])
        if shape != list(inputs.shape[1:]):
            return f"it takes images of shape {shape}, this data has {list(inputs.shape[1:])}"
    names = [str(col.name) for col in logged.outputs.inputs]
    classes = [column.removeprefix("prob_") for column in names if column.startswith("prob_")]
    if classes != list(class_names):
        return f"it predicts classes {classes}, this data has {list(class_names)}"
    return None


def incomparable_or_raise(
    error: Exception, champion_uri: str, inputs: Inputs, class_names: Sequence[str], new_version: str
) -> str:
    """Why the champion at ``champion_uri``, which failed to score with ``error``, cannot be judged
    on this data at all (so the new version may take the alias unjudged). Raises instead when it
    could have been judged: the server did not answer (retried), or it failed to load or predict
    (:class:`RegistrationError`; the alias stays and a re-run judges ``new_version``)."""
    if isinstance(error, MlflowException) and is_transient(error):
        raise error
    try:
        mismatch = input_mismatch(champion_uri, inputs, class_names)
    except MlflowException as unreadable:
        if is_transient(unreadable):
            raise
        mismatch = None
    if mismatch is None:
        raise RegistrationError(
            f"{champion_uri} ({CHAMPION}) could not be scored on this test data ({error}); {CHAMPION} "
            f"stays where it is and v{new_version} waits as {CHALLENGER}: re-run the register stage "
            "once the champion loads"
        ) from error
    return mismatch


def raw_pixels(split: PreparedSplit, stats: Normalization) -> np.ndarray:
    """The split's images back in the source's raw pixel values (what the registered model takes)."""
    mean = np.asarray(stats.mean, dtype=np.float32)[None, :, None, None]  # (1, C, 1, 1)
    std = np.asarray(stats.std, dtype=np.float32)[None, :, None, None]  # (1, C, 1, 1)
    return (split.x * std + mean).astype(np.float32)  # (N, C, H, W)


def raw_inputs(
    split: PreparedSplit, stats: Normalization | TextStats, folder: Path
) -> np.ndarray | pd.DataFrame:
    """What the registered model takes for ``split``: its raw pixels, or its raw strings as a
    ``text`` column (N rows)."""
    if isinstance(stats, Normalization):
        return raw_pixels(split, stats)
    if split.texts is None:
        raise DataValidationError(folder, "the prepared text split holds no raw texts (re-run preprocess)")
    return pd.DataFrame({TEXT_COLUMN: split.texts})
