"""Behaviour of trained models: the third layer of tests, after code and data contracts.

Each architecture is trained through the train stage's own function on the bundled digits (the
default model sizes, 15 epochs: about 35 s for all four on one CPU thread, MLflow included) and
judged on the held-out test split, fed raw pixels through the module the registry serves
(:class:`RawPixelClassifier`, normalisation folded in where it can be). Training is deterministic on
the CPU, so the figures below are the same on every run; each bound leaves a margin for other torch
builds. On this data at 15 epochs: accuracy 0.90 (lstm) to 0.985 (mlp), the smallest per-class
recall 0.69 (lstm), 92-99% of answers kept with strokes 20% fainter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import ALL_ARCHITECTURES, Architecture, validate_params
from components.data.prepared import load_prepared
from components.models import RawPixelClassifier
from components.registry.judge import raw_pixels
from components.training.artifacts import load_trained_model
from components.training.train import train
from tests.conftest import default_params

EPOCHS = 15
Served = dict[Architecture, RawPixelClassifier]
Split = tuple[torch.Tensor, np.ndarray]  # raw pixels (N, 1, 8, 8), labels (N,)


@pytest.fixture(scope="module")
def trained(digits_project: Path, tracking_uri: str) -> Served:
    """Every architecture at its default size, trained for ``EPOCHS`` epochs, as the registry serves it."""
    raw = default_params()
    # On the CPU also where a GPU is present: the bounds below were measured on its deterministic fp32.
    raw["train"].update(max_epochs=EPOCHS, num_workers=0, early_stopping_patience=0, accelerator="cpu")
    params = validate_params(raw)
    prepared = digits_project / "data/prepared"
    stats = load_prepared(prepared).stats
    served = {}
    for arch in ALL_ARCHITECTURES:
        out = digits_project / "models" / arch
        train(params, arch, prepared, out, work_root=digits_project / ".work", project_root=digits_project)
        network = load_trained_model(out).model
        served[arch] = RawPixelClassifier(network, stats.mean, stats.std, fold_normalisation=True).eval()
    return served


@pytest.fixture(scope="module")
def test_split(digits_project: Path) -> Split:
    """The held-out digits as raw pixels ``(N, 1, 8, 8)`` (values 0..16) and their labels ``(N,)``."""
    prepared = load_prepared(digits_project / "data/prepared")
    test = prepared.splits["test"]
    return torch.from_numpy(raw_pixels(test, prepared.stats)), test.labels


def _probabilities(model: RawPixelClassifier, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(pixels)  # (N, K)


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_every_architecture_learns_every_class(
    trained: Served, test_split: Split, arch: Architecture
) -> None:
    """Minimum functionality: far above chance (0.1) on images it never saw, and no class left out."""
    pixels, labels = test_split
    predicted = _probabilities(trained[arch], pixels).argmax(dim=1).numpy()
    assert (predicted == labels).mean() >= 0.85
    recalls = [(predicted[labels == c] == c).mean() for c in np.unique(labels)]
    assert min(recalls) >= 0.5, recalls


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_an_answer_does_not_depend_on_the_rest_of_the_batch(
    trained: Served, test_split: Split, arch: Architecture
) -> None:
    """Invariance: an image scored alone, or in a batch in another order, gets the same probabilities
    (no dropout left on at inference, nothing shared across the rows of a batch)."""
    pixels, _ = test_split
    model = trained[arch]
    together = _probabilities(model, pixels)  # (N, K)
    alone = torch.cat([_probabilities(model, pixels[i : i + 1]) for i in range(len(pixels))])
    reversed_order = _probabilities(model, pixels.flip(0)).flip(0)
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reversed_order, together, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_fainter_strokes_keep_the_answer_and_mistakes_are_less_confident(
    trained: Served, test_split: Split, arch: Architecture
) -> None:
    """Invariance to a fainter scan (every pixel at 80%, still inside the training range), and a
    direction: the model is surer of its right answers than of its wrong ones."""
    pixels, labels = test_split
    model = trained[arch]
    probabilities = _probabilities(model, pixels)
    predicted = probabilities.argmax(dim=1).numpy()
    fainter = _probabilities(model, pixels * 0.8).argmax(dim=1).numpy()
    assert (fainter == predicted).mean() >= 0.85
    confidence = probabilities.max(dim=1).values.numpy()  # (N,)
    right = predicted == labels
    assert confidence[right].mean() > confidence[~right].mean() + 0.1
