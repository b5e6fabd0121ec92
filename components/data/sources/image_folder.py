"""``imagefolder``: one sub-folder of PNG/JPEG files per class (torchvision ``ImageFolder``).

``data.path`` is either the class-folder tree itself (one pool) or holds ``train/`` and ``test/``
trees with the same class folders (the split is kept). Every non-hidden file in a class folder must
decode as an 8-bit image and all images must share one size: nothing is skipped, resized or
clipped. Images are stored grey-scale (1 channel) when every file is grey-scale, else RGB (3
channels). Hidden files and folders (names starting with ``.``, such as ``.ipynb_checkpoints``)
are not data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.config import DataParams
from components.data.contract import RawSplit, SourceData
from components.data.sources._paths import require_dir, source_path
from components.errors import DataSourceError, DataValidationError

_GREY_MODES = {"1", "L", "LA"}
_COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_EIGHT_BIT_MODES = _GREY_MODES | _COLOUR_MODES


def _is_visible_file(path: str) -> bool:
    return not Path(path).name.startswith(".")


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (file, class index) pairs of one class-folder tree, via torchvision."""
    from torchvision.datasets import ImageFolder

    class VisibleImageFolder(ImageFolder):
        """ImageFolder whose classes are the non-hidden sub-folders only."""

        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            classes = sorted(
                entry.name
                for entry in Path(directory).iterdir()
                if entry.is_dir() and not entry.name.startswith(".")
            )
            if not classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
            return classes, {name: index for index, name in enumerate(classes)}

    try:
        dataset = VisibleImageFolder(str(folder), loader=str, is_valid_file=_is_visible_file)
    except FileNotFoundError as exc:
        raise DataSourceError(f"data.path={folder}: {exc}") from None
    return list(dataset.classes), list(dataset.samples)


def probe_image(path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and (width, height) of an image, decoding it fully so corrupt files are caught."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode, size = image.mode, image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataValidationError(path, "file cannot be decoded as an image", str(exc)) from None
    if mode not in _EIGHT_BIT_MODES:
        raise DataValidationError(
            path,
            "only 8-bit grey-scale or colour images are supported (converting would clip values)",
            f"image mode {mode}",
        )
    return mode, size


def decode_image(path: Path, mode: str) -> np.ndarray:
    """``(C, H, W)`` uint8 pixels of an image :func:`probe_image` accepted, converted to ``mode``."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert(mode), dtype=np.uint8)
    return array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)


def load_image_folder(params: DataParams, root: Path) -> SourceData:
    """Read one or two class-folder trees into uint8 N x C x H x W arrays."""
    folder = require_dir(source_path(params, root), "imagefolder")
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    trees = (
        {"train": folder / "train", "test": folder / "test"}
        if subfolders == ["test", "train"]
        else {"all": folder}
    )

    scanned = {name: _scan(tree) for name, tree in trees.items()}
    class_names = next(iter(scanned.values()))[0]
    for name, (classes, _) in scanned.items():
        if classes != class_names:
            raise DataSourceError(
                f"{trees[name]}: class folders {classes} differ from {trees['train']}: {class_names}"
            )

    # Pass 1: decode headers and pixels once to check every file and agree on one size and mode.
    probes: dict[str, list[tuple[Path, int, str]]] = {}
    reference: tuple[Path, tuple[int, int]] | None = None
    for name, (_, samples) in scanned.items():
        probes[name] = []
        for file, class_index in samples:
            mode, size = probe_image(Path(file))
            if reference is None:
                reference = (Path(file), size)
            elif size != reference[1]:
                raise DataValidationError(
                    file,
                    "inconsistent image sizes: every image must have the same width x height",
                    f"{size[0]}x{size[1]}, while {reference[0]} is {reference[1][0]}x{reference[1][1]}",
                )
            probes[name].append((Path(file), class_index, mode))
    all_grey = all(mode in _GREY_MODES for items in probes.values() for _, _, mode in items)
    target_mode = "L" if all_grey else "RGB"

    # Pass 2: pixels in the common mode.
    splits: dict[str, RawSplit] = {}
    inputs: dict[str, Path] = {}
    for name, items in probes.items():
        images = np.stack([decode_image(file, target_mode) for file, _, _ in items])  # (N, C, H, W)
        labels = np.asarray([class_index for _, class_index, _ in items], dtype=np.int64)
        splits[name] = RawSplit(images=images, labels=labels, image_file=trees[name], label_file=trees[name])
        inputs.update({file.relative_to(folder).as_posix(): file for file, _, _ in items})
    return SourceData(splits=splits, class_names=class_names, inputs=inputs)
