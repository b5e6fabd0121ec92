"""The speed settings of ``train`` resolved for the device training runs on.

``params.yaml`` may say ``auto`` for precision, float32 matmul precision and ``channels_last``; the
right value depends on the device (bfloat16 and TF32 help on a recent NVIDIA GPU and change nothing
useful on a CPU, where exact fp32 keeps results reproducible). This module turns the settings into
concrete values once, before the Trainer is built, so the run records what it actually used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from components.config import Accelerator, TrainParams
from components.errors import ParamsError

DeviceKind = Literal["cpu", "cuda", "mps"]


def device_kind(accelerator: Accelerator) -> DeviceKind:
    """The device type Lightning picks for ``accelerator`` on this machine (``auto``: CUDA, MPS, CPU)."""
    if accelerator == "cuda":
        return "cuda"
    if accelerator in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        # ``gpu`` without a GPU: refused by check_accelerator before the stage runs.
        return "cuda" if accelerator == "gpu" else "cpu"
    return "mps" if accelerator == "mps" else "cpu"


def check_accelerator(accelerator: Accelerator) -> None:
    """Refuse an accelerator this machine lacks (``gpu``/``cuda`` without CUDA, ``mps`` without
    MPS) with the key named, before anything runs; Lightning would raise deep inside the stage."""
    kind = device_kind(accelerator)
    present = torch.cuda.is_available() if kind == "cuda" else torch.backends.mps.is_available()
    if kind != "cpu" and not present:
        raise ParamsError(
            f"train.accelerator: {accelerator}: PyTorch finds no {'CUDA' if kind == 'cuda' else 'MPS'} "
            "device on this machine (check the driver, or CUDA_VISIBLE_DEVICES); use auto or cpu"
        )


@dataclass(frozen=True)
class SpeedSettings:
    """Concrete values of the ``auto``-able speed settings for one architecture on one device."""

    device: DeviceKind
    precision: str  # a Lightning precision, never "auto"
    matmul_precision: str  # "highest" | "high" | "medium"
    channels_last: bool  # NHWC weights and inputs (cnn only)
    compile: bool  # torch.compile the network


def resolve_precision(precision: str, device: DeviceKind) -> str:
    """``auto`` -> ``bf16-mixed`` on a CUDA device with bfloat16 support, else ``32-true``."""
    if precision != "auto":
        return precision
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def resolve_speed(params: TrainParams, arch: str) -> SpeedSettings:
    """Resolve every ``auto`` in ``params`` for ``arch`` on the device ``params.accelerator`` selects."""
    device = device_kind(params.accelerator)
    matmul = params.matmul_precision
    if matmul == "auto":
        matmul = "high" if device == "cuda" else "highest"
    channels_last = device == "cuda" if params.channels_last == "auto" else params.channels_last
    private = params.privacy.enabled  # DP-SGD: float32 (the schema refuses another precision)
    precision = "32-true" if private else resolve_precision(params.precision, device)
    return SpeedSettings(
        device=device,
        precision=precision,
        matmul_precision=matmul,
        channels_last=channels_last and arch == "cnn" and not (private and params.channels_last == "auto"),
        compile=params.compile,
    )


@contextlib.contextmanager
def float32_matmul_precision(value: str) -> Iterator[None]:
    """Set ``torch.set_float32_matmul_precision`` for the block and restore the previous value."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
