"""Behaviour of trained text models: each architecture beats chance on held-out sentences, and a
sentence's answer does not depend on the others in its batch or on their order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.config import Architecture, Params, validate_params
from components.data.ingest import ingest
from components.data.prepared import PreparedData, load_prepared
from components.data.preprocess import preprocess
from components.training.artifacts import load_trained_model
from components.training.train import train
from tests.conftest import default_params
from tests.datagen import write_text_file
from tests.textproject import reviews

TINY_TEXT_MODELS = {
    "mlp": {"hidden_sizes": [16], "embedding_dim": 16},
    "cnn": {"embedding_dim": 16, "filters": 8},
    "lstm": {"hidden_size": 16, "dense_size": 16, "embedding_dim": 16},
    "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_size": 32},
}


def _params() -> Params:
    raw = default_params()
    raw["data"].update(source="text", path="reviews.tsv")
    raw["preprocess"]["text"] = {"vocab_size": 100, "max_length": 16}  # every review fits
    raw["train"].update(max_epochs=15, num_workers=0, learning_rate=0.01, early_stopping_patience=0)
    for arch, sizes in TINY_TEXT_MODELS.items():
        raw["models"][arch].update(sizes)
    return validate_params(raw)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tracking_uri: str) -> tuple[Path, Params, PreparedData]:
    root = tmp_path_factory.mktemp("text-behaviour")
    params = _params()
    write_text_file(root / "reviews.tsv", reviews(400, seed=1))
    ingest(params.data, root / "data" / "raw", root=root)
    preprocess(params.preprocess, root / "data" / "raw", root / "data" / "prepared")
    return root, params, load_prepared(root / "data" / "prepared")


@pytest.mark.parametrize("arch", ["mlp", "cnn", "lstm", "transformer"])
def test_a_trained_text_model_beats_chance_and_answers_each_sentence_alone(
    project: tuple[Path, Params, PreparedData], arch: Architecture
) -> None:
    root, params, prepared = project
    folder = root / "models" / arch
    train(params, arch, root / "data" / "prepared", folder, work_root=root / ".work", project_root=root)
    model = load_trained_model(folder).model
    test = prepared.splits["test"]
    x = torch.from_numpy(test.x)  # (N, L) token ids
    with torch.inference_mode():
        probabilities = torch.softmax(model(x), dim=1)  # (N, K)
        accuracy = (probabilities.argmax(dim=1).numpy() == test.labels).mean()
        assert accuracy > 0.8, f"{arch}: test accuracy {accuracy:.2f} on a task a word decides (chance 0.5)"
        # The same sentences in reverse order, and one at a time: the same probabilities.
        reverse = torch.softmax(model(x.flip(0)), dim=1).flip(0)
        alone = torch.cat([torch.softmax(model(row[None]), dim=1) for row in x[:8]])
    torch.testing.assert_close(reverse, probabilities, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, probabilities[:8], atol=1e-5, rtol=0)
