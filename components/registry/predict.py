"""Batch prediction with a registered model: images in (a folder, an IDX file, an npz), CSV out.

The model is loaded through MLflow (``models:/<name>@champion`` or ``models:/<name>/<version>``) and
fed raw pixels, exactly as a serving endpoint would be; its signature fixes the image size and
channel count, and inputs of another size are refused with the file named, as are inputs on
another scale than the training data's pixels (:func:`check_pixel_range`). A text model takes a file
of texts instead (:mod:`components.registry.predict_text`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from components.atomic import atomic_write_text
from components.data.idx import read_idx
from components.data.sources.image_folder import decode_image, probe_image
from components.data.sources.npz import read_npz_arrays
from components.errors import DataSourceError, DataValidationError, ParamsError, PipelineError
from components.models import inference_device, pixel_range_problem
from components.registry.predict_text import predict_texts, takes_texts
from components.tracking_server import tracking_error

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IDX_MARKERS = ("-ubyte", ".idx")
# Images per predict call. The whole input is already in memory as float32, so a large batch costs
# little more memory, and it spreads the per-call cost (MLflow's input check, the output table):
# at 8,192 a small network predicts about 1.5x faster than at 1,024 (BENCHMARKS.md).
PREDICT_BATCH_SIZE = 8192


@dataclass(frozen=True)
class Inputs:
    """Raw pixels to predict on and a name for each row of the CSV."""

    pixels: np.ndarray
    """N x C x H x W float32, the source's raw values."""
    ids: list[str]


def model_uri(name: str, version: str | None = None, alias: str = "champion") -> str:
    return f"models:/{name}/{version}" if version else f"models:/{name}@{alias}"


def pinned_model_uri(name: str, version: str | None = None, alias: str = "champion") -> str:
    """``models:/<name>/<version>`` for ``version``, or for the version ``alias`` points at now.

    Batch prediction loads this pinned URI and names it in its output, so the version reported is
    the one that predicted even if a registration moves the alias in between.
    """
    if version:
        return model_uri(name, version)
    try:
        found = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:  # no such model or alias; or the server is away (75)
        raise _cannot_load(model_uri(name, None, alias), exc) from None
    return model_uri(name, str(found.version))


def _cannot_load(uri: str, exc: MlflowException) -> PipelineError:
    """``cannot load <uri>: ...`` as the tracking error ``exc`` stands for (a server away: 75)."""
    error = tracking_error(mlflow.get_tracking_uri(), exc)
    return type(error)(f"cannot load {uri}: {error}")


def _declared_model_config(uri: str) -> dict[str, Any]:
    """The load-time settings the model at ``uri`` was logged with (MLflow drops any other key)."""
    flavor = mlflow.models.get_model_info(uri).flavors.get("python_function") or {}
    return dict(flavor.get("config") or {})


def _nchw(x: np.ndarray, file: Path) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]  # (N, H, W) -> (N, 1, H, W)
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if x.ndim == 4:
        return x
    raise DataValidationError(
        file, "images must be N x H x W, N x H x W x C or N x C x H x W", f"got {x.shape}"
    )


def read_inputs(path: Path | str, channels: int) -> Inputs:
    """Read a folder of images, an IDX image file or an ``.npz`` (array ``x``, or its only array)."""
    path = Path(path)
    if path.is_dir():
        return _read_image_folder(path, channels)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file or folder")
    if path.suffix == ".npz":
        arrays = read_npz_arrays(path)
        key = "x" if "x" in arrays else next(iter(arrays)) if len(arrays) == 1 else None
        if key is None:
            raise DataValidationError(path, "an .npz to predict on holds an array x (or a single array)")
        x = _nchw(arrays[key], path)
        return _inputs(x, path)
    if any(marker in path.name for marker in IDX_MARKERS):
        return _inputs(_nchw(read_idx(path, expected_ndim=3), path), path)
    raise DataSourceError(
        f"{path}: expected a folder of images, an IDX file (*-ubyte, *.idx[.gz]) or an .npz"
    )


def _inputs(x: np.ndarray, file: Path) -> Inputs:
    """``x`` (N, C, H, W) as float32 with ``file[i]`` row names; no images is refused."""
    if len(x) == 0:
        raise DataValidationError(file, "holds no images to predict on")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataValidationError(file, "pixels must be numbers", f"got dtype {x.dtype}")
    pixels = x.astype(np.float32)
    nonfinite = int(np.count_nonzero(~np.isfinite(pixels)))
    if nonfinite:  # the model would answer class 0 with empty probabilities, and exit 0
        raise DataValidationError(
            file, "pixels must be finite", f"{nonfinite} NaN or infinite values (beyond float32's range)"
        )
    return Inputs(pixels, [f"{file.name}[{i}]" for i in range(len(x))])


def _read_image_folder(folder: Path, channels: int) -> Inputs:
    """Every image below ``folder``, checked and converted as the imagefolder source does it (only
    8-bit images: converting a 16-bit one to 8 bits would clip it without a word)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)  # ._x.png, .ipynb_*
    )
    if not files:
        raise DataSourceError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for file in files:
        probe_image(file)
        images.append(decode_image(file, "L" if channels == 1 else "RGB"))  # (C, H, W)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataValidationError(folder, "all images must have the same size", f"found {sorted(shapes)}")
    return Inputs(np.stack(images).astype(np.float32), [str(f.relative_to(folder)) for f in files])


def check_pixel_range(
    pixels: np.ndarray, pixel_min: list[float], pixel_max: list[float], source: Path | str
) -> None:
    """Refuse ``pixels`` (N, C, H, W) that are not on the scale of the training split's raw pixels
    (per channel ``pixel_min..pixel_max``), naming ``source``: the rule the registered model applies
    too (:func:`components.models.pixel_range_problem`), checked here once over the whole input."""
    problem = pixel_range_problem(pixels, pixel_min, pixel_max)
    if problem is not None:
        rule, detail = problem
        raise DataValidationError(
            source, rule, f"{detail}; rescale the images to that range, or pass --no-range-check"
        )


def _load_for_prediction(uri: str, device: str | None) -> Any:
    """The registered model at ``uri`` loaded to run on ``device`` (``None``: its own setting), with
    the wrapper's per-batch range check off (:func:`predict_file` checks the whole input once)."""
    if device is not None:
        try:
            inference_device({"device": device})
        except ValueError as exc:
            raise PipelineError(f"predict: {exc}") from None
    try:
        config: dict[str, Any] = {"device": device} if device else {}
        if "check_pixel_range" in _declared_model_config(uri):
            # Checked once over the whole input, naming the file (the wrapper would check each
            # batch: a last batch of a few dark images alone could fail its floor rule).
            config["check_pixel_range"] = False
        model = mlflow.pyfunc.load_model(uri, model_config=config or None)
    except MlflowException as exc:  # no such model, version or alias; or the server is away (75)
        raise _cannot_load(uri, exc) from None
    except ValueError as exc:  # the wrapper refused its files (changed since training) or settings
        raise PipelineError(f"cannot load {uri}: {exc}") from None
    if device is not None and model.model_config.get("device") != device:
        # MLflow drops load-time keys a model was not logged with: this version would run elsewhere.
        raise PipelineError(
            f"predict: {uri} was registered without a device setting, so --device {device} cannot "
            "apply to it; use --device auto (a CUDA device when there is one), with "
            "CUDA_VISIBLE_DEVICES= to keep it on the CPU"
        )
    return model


def predict_file(
    uri: str,
    source: Path | str,
    out_csv: Path | str,
    *,
    batch_size: int = PREDICT_BATCH_SIZE,
    device: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    check_range: bool = True,
    text_column: str = "text",
) -> pd.DataFrame:
    """Predict every image of ``source`` with the model at ``uri``; write ``out_csv`` atomically.
    A text model predicts every text of ``source`` instead (its column ``text_column``; see
    :func:`components.registry.predict_text.predict_texts`).

    ``device`` is where the network runs (``auto``: a CUDA device when there is one, ``cpu``,
    ``cuda[:<n>]``; ``None``: the model's setting, ``auto`` unless ``MLFLOW_PYFUNC_INFERENCE_CONFIG``
    names one). Versions registered before the registry declared the ``device`` setting always run
    on ``auto``: naming a device for one of them is refused rather than silently ignored.
    ``on_batch(done, total)`` is called after each batch (a progress bar). ``check_range``: refuse
    inputs on another scale than the training data's (:func:`check_pixel_range`); versions whose
    data recorded no pixel range are not checked.
    """
    if Path(out_csv).is_dir():
        raise ParamsError(f"--out {out_csv}: is a folder; name the CSV file to write")
    model = _load_for_prediction(uri, device)
    if takes_texts(model):
        return predict_texts(
            model, source, out_csv, text_column=text_column, batch_size=batch_size, on_batch=on_batch
        )
    schema = model.metadata.get_input_schema()
    shape = tuple(schema.inputs[0].shape[1:]) if schema is not None else None  # (C, H, W)
    inputs = read_inputs(source, channels=int(shape[0]) if shape else 1)
    if shape is not None and inputs.pixels.shape[1:] != shape:
        raise DataValidationError(
            source, f"the model takes images of shape {list(shape)}", f"got {list(inputs.pixels.shape[1:])}"
        )
    wrapper = model.unwrap_python_model()
    pixel_min, pixel_max = getattr(wrapper, "pixel_min", None), getattr(wrapper, "pixel_max", None)
    if check_range and pixel_min is not None and pixel_max is not None:
        check_pixel_range(inputs.pixels, pixel_min, pixel_max, source)
    frames = []
    total = len(inputs.pixels)
    for start in range(0, total, batch_size):
        frames.append(model.predict(inputs.pixels[start : start + batch_size]))
        if on_batch is not None:
            on_batch(min(start + batch_size, total), total)
    result = pd.concat(frames, ignore_index=True)
    result.insert(0, "id", inputs.ids)
    buffer = io.StringIO()
    result.to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.6g")
    atomic_write_text(out_csv, buffer.getvalue())
    return result
