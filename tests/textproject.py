"""A tiny text project for the registry tests: labelled reviews, prepared and trained in-process."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from components.config import Params, validate_params
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from components.training.train import train
from tests.conftest import default_params
from tests.datagen import write_text_file

POSITIVE = ["good", "great", "fine", "lovely", "superb", "excellent", "nice"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring", "dull", "worse"]
FILLER = ["the", "movie", "was", "a", "plot", "and", "actors", "it", "film", "really", "quite"]
MAX_LENGTH = 8  # tokens kept per text: shorter than most reviews, so truncation is exercised


def reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (review, positive|negative) pairs: filler words plus two words of the label's kind."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 1
        words = rng.choices(FILLER, k=rng.randint(3, 12)) + rng.choices(
            POSITIVE if positive else NEGATIVE, k=2
        )
        rng.shuffle(words)
        rows.append((" ".join(words), "positive" if positive else "negative"))
    return rows


def text_params(max_epochs: int = 12, model_name: str = "reviews-classifier") -> Params:
    """Defaults with ``data.source: text`` on ``reviews.tsv``, a tiny mlp and short texts."""
    raw = default_params()
    raw["data"].update(source="text", path="reviews.tsv")
    raw["preprocess"]["text"] = {"vocab_size": 100, "max_length": MAX_LENGTH}
    raw["train"].update(max_epochs=max_epochs, num_workers=0, architectures=["mlp"], learning_rate=0.01)
    raw["train"]["early_stopping_patience"] = 0
    raw["models"]["mlp"].update(hidden_sizes=[16], embedding_dim=16)
    raw["register"]["model_name"] = model_name
    return validate_params(raw)


@dataclass(frozen=True)
class TextProject:
    root: Path
    params: Params
    prepared: Path

    def train(self, out: str, max_epochs: int) -> Path:
        """Train the mlp for ``max_epochs`` into ``root/out``; the model folder."""
        settings = self.params.model_copy(
            update={"train": self.params.train.model_copy(update={"max_epochs": max_epochs})}
        )
        folder = self.root / out
        train(settings, "mlp", self.prepared, folder, work_root=self.root / ".work", project_root=self.root)
        return folder


def prepare_text_project(root: Path, n: int = 240) -> TextProject:
    """``root/reviews.tsv`` of ``n`` reviews, ingested and preprocessed under ``root/data``."""
    params = text_params()
    write_text_file(root / "reviews.tsv", reviews(n))
    ingest(params.data, root / "data" / "raw", root=root)
    preprocess(params.preprocess, root / "data" / "raw", root / "data" / "prepared")
    return TextProject(root, params, root / "data" / "prepared")
