"""``idx``: a folder of IDX image/label pairs, one pair per split, plain or ``.gz``.

File names follow the MNIST convention ``<prefix>-images-idx3-ubyte[.gz]`` and
``<prefix>-labels-idx1-ubyte[.gz]`` (``-``, ``_`` or ``.`` as separators). A folder with a
``train`` pair and a ``t10k``/``test`` pair keeps that split; a folder with a single pair (such as
the 10,000-image MNIST test set) becomes one pool that preprocessing splits.
"""

from __future__ import annotations

import re
from pathlib import Path

from components.config import DataParams
from components.data.contract import RawSplit, SourceData, infer_num_classes
from components.data.idx import read_idx
from components.data.sources._paths import require_dir, source_path
from components.errors import DataSourceError

_IDX_NAME = re.compile(
    r"^(?P<prefix>.+?)[-_.](?P<kind>images|labels)[-_.]idx(?P<ndim>[13])[-_.]ubyte(?P<gz>\.gz)?$"
)
_SPLIT_OF_PREFIX = {"train": "train", "t10k": "test", "test": "test"}


def find_idx_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{prefix: (images file, labels file)}`` for every IDX pair in ``folder``.

    An uncompressed file wins over its ``.gz`` twin (torchvision keeps both side by side).
    """
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(folder.iterdir()):
        match = _IDX_NAME.match(path.name)
        if not match or not path.is_file():
            continue
        key = (match["prefix"], match["kind"])
        if key not in found or not match["gz"]:
            found[key] = path
    prefixes = sorted({prefix for prefix, _ in found})
    pairs: dict[str, tuple[Path, Path]] = {}
    for prefix in prefixes:
        images, labels = found.get((prefix, "images")), found.get((prefix, "labels"))
        if images is None or labels is None:
            have = images or labels
            want = "labels-idx1-ubyte" if labels is None else "images-idx3-ubyte"
            raise DataSourceError(
                f"{have}: no matching {prefix}-{want}[.gz] in {folder} "
                "(each IDX images file needs a labels file with the same prefix)"
            )
        pairs[prefix] = (images, labels)
    return pairs


def _split_names(prefixes: list[str], folder: Path) -> dict[str, str]:
    if len(prefixes) == 1:
        return {prefixes[0]: "all"}
    named = {p: _SPLIT_OF_PREFIX.get(p.lower()) for p in prefixes}
    if sorted(v for v in named.values() if v) != ["test", "train"] or len(prefixes) != 2:
        raise DataSourceError(
            f"data.path={folder}: found IDX pairs with prefixes {', '.join(prefixes)}; expected "
            "one pair (one pool) or two pairs named train and t10k/test"
        )
    return {p: str(v) for p, v in named.items()}


def load_idx_folder(params: DataParams, root: Path) -> SourceData:
    """Read every IDX pair in ``data.path`` (see module docstring for the naming rule)."""
    folder = require_dir(source_path(params, root), "idx")
    pairs = find_idx_pairs(folder)
    if not pairs:
        raise DataSourceError(
            f"data.path={folder}: no IDX files found (expected <prefix>-images-idx3-ubyte[.gz] "
            "and <prefix>-labels-idx1-ubyte[.gz])"
        )
    names = _split_names(sorted(pairs), folder)
    splits: dict[str, RawSplit] = {}
    for prefix, (image_file, label_file) in pairs.items():
        images = read_idx(image_file, expected_ndim=3)  # (N, H, W)
        labels = read_idx(label_file, expected_ndim=1)  # (N,)
        splits[names[prefix]] = RawSplit(
            images=images[:, None, :, :],  # (N, 1, H, W)
            labels=labels,
            image_file=image_file,
            label_file=label_file,
        )
    num_classes = infer_num_classes(splits, params.num_classes)
    inputs = {path.name: path for pair in pairs.values() for path in pair}
    return SourceData(splits=splits, class_names=[str(c) for c in range(num_classes)], inputs=inputs)
