"""``npz``: a NumPy ``.npz`` archive with arrays ``x``/``y`` and optionally ``x_test``/``y_test``.

``data.path`` is the ``.npz`` file, or a folder holding exactly one. ``x`` is N x H x W
(grey-scale), N x H x W x C (channels last, C in 1 or 3) or N x C x H x W (C in 1 or 3). Object
arrays are refused (no pickle).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from components.config import DataParams
from components.data.contract import RawSplit, SourceData, infer_num_classes
from components.data.sources._paths import source_path
from components.errors import DataSourceError, DataValidationError

ALLOWED_KEYS = {"x", "y", "x_test", "y_test"}


def _find_npz(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        archives = sorted(path.glob("*.npz"))
        if len(archives) == 1:
            return archives[0]
        raise DataSourceError(
            f"data.path={path}: expected exactly one .npz file in the folder, found {len(archives)}"
            + (f" ({', '.join(a.name for a in archives)})" if archives else "")
        )
    raise DataSourceError(f"data.path={path}: no such .npz file or folder")


def _to_nchw(x: np.ndarray, file: Path, key: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None, :, :]  # (N, H, W) -> (N, 1, H, W)
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x  # already (N, C, H, W)
    raise DataValidationError(
        file,
        f"array {key} must be N x H x W, N x H x W x C or N x C x H x W with C in 1 or 3",
        f"got shape {list(x.shape)}",
    )


def read_npz_arrays(file: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, read without pickle; a damaged archive or an object array is a
    :class:`DataValidationError` naming the file."""
    if not zipfile.is_zipfile(file):  # numpy would read it as a pickle and blame object arrays
        raise DataValidationError(file, "not a readable .npz archive", "not a zip file")
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataValidationError(file, "not a readable .npz archive", str(exc)) from None
    except ValueError as exc:
        raise DataValidationError(
            file, "arrays must be numeric (object arrays need pickle, which is refused)", str(exc)
        ) from None


def load_npz(params: DataParams, root: Path) -> SourceData:
    """Read the archive without pickle; ``x_test``/``y_test`` become the test split."""
    file = _find_npz(source_path(params, root))
    arrays = read_npz_arrays(file)
    unknown = sorted(set(arrays) - ALLOWED_KEYS)
    if unknown:
        raise DataValidationError(file, f"unexpected arrays {unknown} (allowed: x, y, x_test, y_test)")
    for required in ("x", "y"):
        if required not in arrays:
            raise DataValidationError(file, f"missing array {required!r} (required: x, y)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataValidationError(file, "x_test and y_test must be given together")

    pairs = {"train": ("x", "y"), "test": ("x_test", "y_test")} if "x_test" in arrays else {"all": ("x", "y")}
    splits: dict[str, RawSplit] = {}
    for name, (x_key, y_key) in pairs.items():
        splits[name] = RawSplit(
            images=_to_nchw(arrays[x_key], file, x_key),
            labels=arrays[y_key],
            image_file=Path(f"{file}[{x_key}]"),
            label_file=Path(f"{file}[{y_key}]"),
        )
    num_classes = infer_num_classes(splits, params.num_classes)
    return SourceData(
        splits=splits, class_names=[str(c) for c in range(num_classes)], inputs={file.name: file}
    )
