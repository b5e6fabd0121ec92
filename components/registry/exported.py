"""The registered network: raw pixels in, class probabilities out, as one ``torch.export`` program.

Normalisation (``stats.json``) and the softmax are part of the exported graph, so whoever loads the
registered model feeds it the source's raw pixel values and needs neither this project's code nor
its statistics. ``torch.export`` (the ``pt2`` format) stores a traced graph and tensors, not pickled
Python objects, so loading it runs no arbitrary code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.export import Dim, ExportedProgram, export

from components.data.normalize import Normalization

PROGRAM_FILE = "model.pt2"


class RawPixelClassifier(nn.Module):
    """``(B, C, H, W)`` raw pixels -> ``(B, K)`` class probabilities."""

    def __init__(self, network: nn.Module, stats: Normalization) -> None:
        super().__init__()
        self.network = network
        channels = len(stats.mean)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(stats.std, dtype=torch.float32).view(1, channels, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() - self.mean) / self.std  # (B, C, H, W), as preprocessing normalised
        return torch.softmax(self.network(x), dim=1)  # (B, K)


def export_program(network: nn.Module, stats: Normalization) -> ExportedProgram:
    """Trace ``network`` with its normalisation, on the CPU, for any batch size."""
    module = RawPixelClassifier(network, stats).to("cpu").eval()
    example = torch.zeros(2, *stats.image_shape)  # (2, C, H, W)
    with torch.no_grad():
        return export(module, (example,), dynamic_shapes=({0: Dim("batch", min=1)},))


def save_program(program: ExportedProgram, path: Path) -> Path:
    torch.export.save(program, str(path))
    return path
