"""The names a dataset goes by in MLflow: its experiment, its registered model, its dataset inputs.

One function, :func:`dataset_name`, names the dataset; every stage, the flow and ``predict`` derive
their defaults from it, so two datasets never share an experiment or a registered model:

- ``digits`` and the torchvision sets (``mnist``, ``fashion_mnist``, ``kmnist``) are named by their
  source: the source fixes the data, whatever folder holds its files.
- A file-based source (``idx``, ``imagefolder``, ``npz``, ``text``, ...) is ``<source>-<name>``, the
  name being ``data.path``'s last part without its extension, lower-cased, other characters than
  ``a-z0-9`` turned into ``-``: ``data/MyData.npz`` -> ``npz-mydata``, ``data/sst2/`` -> ``text-sst2``.
  Read from the text of ``data.path``, not the file system, so every entry point agrees.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePath

from components.config import DataParams, Params

# Sources whose name says which data they are: the folder only says where the files lie.
NAMED_SOURCES = frozenset({"digits", "mnist", "fashion_mnist", "kmnist"})
_COMPRESSIONS = frozenset({".gz", ".bz2", ".xz", ".zst", ".zip"})
_EXTENSION = re.compile(r"\.[a-z][a-z0-9]{0,9}$", re.IGNORECASE)  # .npz, .csv, .jsonl; not ".2" of v1.2
_MAX_NAME = 64  # characters of the path's part: names stay readable in the MLflow UI


def path_name(path: str) -> str:
    """``path``'s last part without extension, reduced to ``[a-z0-9-]``; "" if nothing is left
    (``.``, ``..``, ``/``, only odd characters)."""
    part = PurePath(path.strip()).name
    if part == "..":
        return ""
    suffix = PurePath(part).suffix.lower()
    if suffix in _COMPRESSIONS:
        part = part[: -len(suffix)]
    part = _EXTENSION.sub("", part) or part  # ".hidden" keeps its name
    ascii_only = unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode()
    reduced = re.sub(r"[^a-z0-9]+", "-", ascii_only.lower()).strip("-")
    return reduced[:_MAX_NAME].rstrip("-")


def dataset_name(data: DataParams) -> str:
    """``digits``, ``mnist``, ...; ``<source>-<path name>`` for file-based sources (``npz-mydata``),
    or the source alone when ``data.path`` has no usable name (``.``)."""
    if data.source in NAMED_SOURCES:
        return data.source
    name = path_name(data.path)
    return f"{data.source}-{name}" if name else data.source


def experiment_name(params: Params) -> str:
    """``mlflow.experiment_name``, else the dataset's name: one experiment per dataset."""
    return params.mlflow.experiment_name or dataset_name(params.data)


PRIVATE_SUFFIX = "-dp"  # models trained with DP-SGD register under their own name (docs/privacy.md)


def registered_model_name(params: Params) -> str:
    """``register.model_name``, else ``<dataset name>-classifier``: one registered model per dataset;
    with ``train.privacy.enabled`` that name plus ``-dp``: private and non-private models never
    compete for one ``champion``."""
    name = params.register.model_name or f"{dataset_name(params.data)}-classifier"
    return f"{name}{PRIVATE_SUFFIX}" if params.train.privacy.enabled else name
