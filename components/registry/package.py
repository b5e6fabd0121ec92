"""Packaging a model folder as an MLflow ``pyfunc`` model (see :mod:`components.registry.pyfunc_model`):
its weights, config and statistics with a copy of the architecture code; raw pixels in, class ids and
probabilities out, normalisation included (a text model: raw strings in, with its tokenizer and a
copy of the encoding code); logged to the run that trained it, with a signature and an input
example, and registered as a new version."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import safetensors
import tokenizers
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from components.code_version import code_tags
from components.data.manifest import MANIFEST, TOKENIZER
from components.data.text_stats import TextStats
from components.tracking import Tracker
from components.training.artifacts import MODEL_CARD, STATS, WEIGHTS

MODEL_ARTIFACT = "model"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
NETWORKS_DIR = Path(__file__).resolve().parents[1] / "models"  # torch-only; copied into every model
# The one text -> ids function (tokenizers and NumPy only), copied into every text model.
ENCODING_FILE = Path(__file__).resolve().parents[1] / "data" / "tokenize.py"
# The compressed models' transforms and pickle-free storage (torch only), copied into each one.
CODEC_FILE = Path(__file__).resolve().parents[1] / "compression" / "codec.py"
COMPRESSION = (
    "compression.json"  # components.compression.folder's name, repeated: that module imports torch-heavy code
)
# The load-time settings the wrapper reads (pyfunc_model.py), with their defaults.
WRAPPER_CONFIG = {"device": "auto", "check_pixel_range": True}
TEXT_WRAPPER_CONFIG = {"device": "auto"}  # no pixels, no range to check
# The wrapper's TEXT_COLUMN, repeated: importing pyfunc_model.py would run its set_model().
TEXT_COLUMN = "text"


def training_code_tags(info: Mapping[str, Any], project_root: Path | str) -> dict[str, str]:
    """The code that trained a model (``train_info.json``), not the checkout that registers it:
    a model trained at one commit and registered after the next is tagged with the first."""
    commit = info.get("git_commit")
    if not commit:  # written before train_info recorded it: the best there is
        return code_tags(project_root)
    return {
        "git.commit": str(commit),
        "mlflow.source.git.commit": str(commit),
        "git.dirty": str(info.get("git_dirty", "unknown")),
    }


def _outputs(class_names: Sequence[str]) -> Schema:
    """Class id, name and probability of the predicted class, then one probability per class."""
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec("long", "class_id"),
        ColSpec("string", "class_name"),
        ColSpec("float", "probability"),
    ]
    outputs += [ColSpec("float", f"prob_{name}") for name in class_names]
    return Schema(outputs)


def signature(image_shape: Sequence[int], class_names: Sequence[str]) -> ModelSignature:
    """Raw float32 pixels ``(-1, C, H, W)`` in; class id, name and probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *image_shape))]), outputs=_outputs(class_names)
    )


def text_signature(class_names: Sequence[str]) -> ModelSignature:
    """A ``text`` string column in; class id, name and probabilities out."""
    return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]), outputs=_outputs(class_names))


def log_and_register(
    tracker: Tracker,
    trained: Any,
    name: str,
    example: np.ndarray | pd.DataFrame,
    version_tags: dict[str, str],
) -> ModelVersion:
    """Log the pyfunc model to the training run (or a new run) and register it as a new version;
    ``example``: a few raw test inputs (pixels, or a ``text`` column), the logged input example."""
    run_id = (trained.info.get("mlflow") or {}).get("run_id")
    arch = trained.architecture
    if not (run_id and tracker.run_exists(run_id)):  # trained against another tracking server
        run_id = tracker.client.create_run(
            tracker.experiment_id, run_name=f"{arch}-register", tags=version_tags
        ).info.run_id
    tracker.claim(run_id)  # start_run sets it RUNNING: name this process as the one holding it
    with tempfile.TemporaryDirectory() as tmp:
        networks = Path(tmp) / "networks"
        networks.mkdir()
        for source in sorted(NETWORKS_DIR.glob("*.py")):
            shutil.copyfile(source, networks / source.name)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(PYFUNC_FILE),
                input_example=example,
                metadata={"architecture": arch, "data_version": version_tags["data.version"]},
                **_model_kind(trained, networks, Path(tmp)),
            )
    return mlflow.register_model(info.model_uri, name, tags=version_tags)


def _model_kind(trained: Any, networks: Path, tmp: Path) -> dict[str, Any]:
    """The arguments of ``log_model`` that differ between image and text models: artifacts,
    signature, load-time settings and pip requirements."""
    folder = Path(trained.folder)
    artifacts = {
        "networks": str(networks),
        "card": str(folder / MODEL_CARD),
        "weights": str(folder / WEIGHTS),
        "stats": str(folder / STATS),
        "manifest": str(folder / MANIFEST),
    }
    if (folder / COMPRESSION).is_file():  # a compressed model: its card and the code that rebuilds it
        codec = tmp / "codec.py"
        shutil.copyfile(CODEC_FILE, codec)
        artifacts |= {"compression": str(folder / COMPRESSION), "codec": str(codec)}
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"safetensors=={safetensors.__version__}",
        "numpy",
        "pandas",
    ]
    stats = trained.stats
    if not isinstance(stats, TextStats):
        # model_config declares the load-time settings the wrapper reads: MLflow drops any key a
        # model was not logged with, so without it model_config={"device": "cpu"} would be ignored.
        return {
            "artifacts": artifacts,
            "signature": signature(stats.image_shape, stats.class_names),
            "model_config": dict(WRAPPER_CONFIG),
            "pip_requirements": requirements,
        }
    encoding = tmp / "encoding.py"  # a file artifact keeps its name: not "tokenize", a stdlib module
    shutil.copyfile(ENCODING_FILE, encoding)
    return {
        "artifacts": {**artifacts, "tokenizer": str(folder / TOKENIZER), "encoding": str(encoding)},
        "signature": text_signature(stats.class_names),
        "model_config": dict(TEXT_WRAPPER_CONFIG),
        "pip_requirements": [*requirements, f"tokenizers=={tokenizers.__version__}"],
    }
