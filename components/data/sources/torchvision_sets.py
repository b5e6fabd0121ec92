"""``mnist``, ``fashion_mnist``, ``kmnist``: torchvision's dataset classes on a local root.

torchvision looks for the uncompressed IDX files in ``<data.path>/<ClassName>/raw/``. Nothing is
downloaded unless ``data.download`` is true. Before torchvision parses them, every file is checked
with the project's IDX reader so that a corrupt file is named with the rule it breaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.config import DataParams
from components.data.contract import RawSplit, SourceData
from components.data.idx import read_idx
from components.data.sources._paths import source_path
from components.errors import DataSourceError

if TYPE_CHECKING:  # torchvision is imported lazily: only these sources need it
    from torchvision.datasets import MNIST


def _dataset_class(source: str) -> type[MNIST]:
    from torchvision import datasets

    classes: dict[str, type[MNIST]] = {
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "kmnist": datasets.KMNIST,
    }
    return classes[source]


def expected_files(source: str) -> list[str]:
    """File names torchvision expects in its raw folder, in (train images, train labels,
    test images, test labels) order."""
    return [Path(name).name.removesuffix(".gz") for name, _md5 in _dataset_class(source).resources]


def load_torchvision_set(params: DataParams, root: Path) -> SourceData:
    """Train and test splits of a torchvision digit-like set, 28x28 grey-scale, ten classes."""
    dataset_class = _dataset_class(params.source)
    data_root = source_path(params, root)
    raw_folder = data_root / dataset_class.__name__ / "raw"
    names = expected_files(params.source)
    if params.download:
        try:
            dataset_class(str(data_root), train=True, download=True)
            dataset_class(str(data_root), train=False, download=True)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise DataSourceError(
                f"data.source={params.source}: download into {raw_folder} failed ({exc}); "
                "put the files there by hand and set data.download: false"
            ) from None
    missing = [name for name in names if not (raw_folder / name).is_file()]
    if missing:
        hint = ""
        if any((raw_folder / f"{name}.gz").is_file() for name in missing):
            hint = " Only .gz copies are there: gunzip them, or use data.source: idx on that folder."
        raise DataSourceError(
            f"data.source={params.source}: missing {', '.join(missing)} in {raw_folder} "
            f"(expected files: {', '.join(names)}). Put them there, set data.download: true "
            f"to let torchvision fetch them, or point data.path at the folder holding "
            f"{dataset_class.__name__}/raw.{hint}"
        )
    for name, ndim in zip(names, (3, 1, 3, 1), strict=True):
        read_idx(raw_folder / name, expected_ndim=ndim)

    splits: dict[str, RawSplit] = {}
    for split_name, train, (image_name, label_name) in (
        ("train", True, names[0:2]),
        ("test", False, names[2:4]),
    ):
        dataset = dataset_class(str(data_root), train=train, download=False)
        splits[split_name] = RawSplit(
            images=dataset.data.numpy()[:, None, :, :],  # (N, 1, 28, 28) uint8
            labels=dataset.targets.numpy().astype(np.int64),  # (N,)
            image_file=raw_folder / image_name,
            label_file=raw_folder / label_name,
        )
    return SourceData(
        splits=splits,
        class_names=[str(c) for c in dataset_class.classes],
        inputs={f"{dataset_class.__name__}/raw/{name}": raw_folder / name for name in names},
    )
