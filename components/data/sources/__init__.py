"""One loader per ``data.source``; :func:`load_source` picks it.

Each loader reads local files only (``mnist``/``fashion_mnist``/``kmnist`` download when
``data.download`` is true). Image loaders convert to the
:class:`~components.data.contract.SourceData` shape and leave validation to
:mod:`components.data.contract`; the ``text`` loader checks every record itself and returns a
:class:`~components.data.text_raw.TextSourceData`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from components.config import DataParams, DataSource
from components.data.contract import SourceData
from components.data.sources.digits import load_digits
from components.data.sources.idx_folder import load_idx_folder
from components.data.sources.image_folder import load_image_folder
from components.data.sources.npz import load_npz
from components.data.sources.text import load_text
from components.data.sources.torchvision_sets import load_torchvision_set
from components.data.text_raw import TextSourceData

Loader = Callable[[DataParams, Path], SourceData | TextSourceData]

LOADERS: dict[DataSource, Loader] = {
    "digits": load_digits,
    "mnist": load_torchvision_set,
    "fashion_mnist": load_torchvision_set,
    "kmnist": load_torchvision_set,
    "idx": load_idx_folder,
    "imagefolder": load_image_folder,
    "npz": load_npz,
    "text": load_text,
}


def load_source(params: DataParams, root: Path | str = ".") -> SourceData | TextSourceData:
    """Load ``params.source``; relative ``params.path`` values resolve against ``root``."""
    return LOADERS[params.source](params, Path(root))
