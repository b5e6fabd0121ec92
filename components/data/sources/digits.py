"""``digits``: scikit-learn's bundled 8x8 handwritten digits, the offline embedded default."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from components.config import DataParams
from components.data.contract import RawSplit, SourceData


def load_digits(params: DataParams, root: Path) -> SourceData:
    """1,797 images of 8x8 pixels, values 0..16, ten classes; one pool (no own test split)."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    images = bunch.images.astype(np.uint8)[:, None, :, :]  # (N, 1, 8, 8), integer values 0..16
    labels = bunch.target.astype(np.int64)  # (N,)
    data_file = Path(str(resources.files("sklearn.datasets.data") / "digits.csv.gz"))
    split = RawSplit(images=images, labels=labels, image_file=data_file, label_file=data_file)
    return SourceData(
        splits={"all": split},
        class_names=[str(d) for d in range(10)],
        inputs={"sklearn/datasets/data/digits.csv.gz": data_file},
    )
