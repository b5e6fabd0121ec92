"""The explain stage's pure parts: its params, the deletion test and its flag, the convergence
refinement, integrated gradients on token embeddings, and the escaping of the HTML page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.config import validate_params
from components.errors import ParamsError
from components.interpret.attribution import (
    Attributions,
    converged,
    embedding_layer,
    integrated_gradients_tokens,
)
from components.interpret.deletion import (
    deletion_count,
    deletion_report,
    random_positions,
    top_positions,
    unfaithful_warning,
)
from components.interpret.figures import WrongText, wrong_texts_html
from components.models import build_model
from components.models.cnn import CNNConfig
from components.models.lstm import LSTMConfig
from components.models.mlp import MLPConfig
from components.models.transformer import TransformerConfig


@pytest.mark.parametrize(
    ("explain", "message"),
    [
        ({"steps": 1}, r"explain\.steps: .*greater than or equal to 2"),
        ({"steps": 128, "max_steps": 64}, r"explain: max_steps \(64\) must be >= steps \(128\)"),
        ({"deletion_fraction": 1.0}, r"explain\.deletion_fraction: .*less than 1"),
        ({"samples_per_class": 0}, r"explain\.samples_per_class"),
        ({"delta_tolerance": 0}, r"explain\.delta_tolerance"),
        ({"enabled": "yes"}, r"explain\.enabled"),
        ({"method": "lime"}, r"explain\.method: unknown key"),
    ],
)
def test_bad_explain_settings_are_refused_naming_the_key(explain: dict[str, object], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate_params({"explain": explain})


def test_top_and_random_deletion_take_as_many_positions_the_top_ones_by_score() -> None:
    scores = np.array([[0.1, 0.9, -2.0, 0.5, 0.3], [5.0, 1.0, 0.0, 0.0, 0.0]])
    valid = np.array([[True] * 5, [False, True, True, True, False]])  # row 1: 3 real tokens
    top = top_positions(scores, valid, 0.4)
    assert top.tolist() == [[False, True, False, True, False], [False, True, False, False, False]]
    random = random_positions(valid, 0.4, np.random.default_rng(0))
    assert random.sum(axis=1).tolist() == [2, 1]
    assert not np.any(random & ~valid)  # never a padding position
    assert deletion_count(64, 0.1) == 6
    assert deletion_count(3, 0.1) == 1  # at least one token of a short text


def test_an_attribution_no_better_than_random_is_flagged() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    intact = labels.copy()
    hurt = np.where(np.arange(10) < 2, 1 - labels, labels)  # 2 of 10 turned wrong
    same = deletion_report(labels, intact, hurt, hurt, 0.1)  # the attribution = random
    assert same["top_drop"] == same["random_drop"] == pytest.approx(0.2)
    assert not same["faithful"]
    assert "does not point at what the model uses" in unfaithful_warning("integrated gradients", same)
    better = deletion_report(labels, intact, 1 - labels, hurt, 0.1)
    assert better["faithful"]
    assert better["drop_ratio"] == pytest.approx(5.0)
    assert better["top_accuracy"] == 0.0
    assert better["random_accuracy"] == pytest.approx(0.8)
    nothing = deletion_report(labels, hurt, hurt, labels, 0.1)  # top changed nothing, random helped
    assert nothing["top_drop"] == 0 > nothing["random_drop"]
    assert not nothing["faithful"]
    assert nothing["drop_ratio"] is None  # no ratio to a drop that is not one


def test_inputs_whose_delta_is_too_large_are_integrated_again_with_more_steps() -> None:
    calls: list[tuple[list[int], int]] = []
    error = np.array([0.001, 0.015, 2.0])  # per input: delta = error * 64 / steps

    def attribute(rows: np.ndarray, steps: int) -> Attributions:
        calls.append((rows.tolist(), steps))
        return Attributions(np.full((len(rows), 2), float(steps)), error[rows] * 64 / steps)

    result = converged(attribute, 3, steps=64, max_steps=1024, tolerance=0.01)
    # 2.0 * 64 / 1024 = 0.125 is still over the tolerance: max_steps ends it
    assert calls == [([0, 1, 2], 64), ([1, 2], 128), ([2], 256), ([2], 512), ([2], 1024)]
    assert result.steps == 1024
    assert result.refined == 2
    assert result.attributions.scores[:, 0].tolist() == [64.0, 128.0, 1024.0]
    assert np.abs(result.attributions.delta[:2]).max() <= 0.01 < result.attributions.delta[2]


@pytest.mark.parametrize("arch", ["mlp", "cnn", "lstm", "transformer"])
def test_token_attributions_are_complete_and_zero_on_padding(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, SMALL_TEXT[arch]).eval()
    # The shorter text first: the lstm runs its rows longest first, which must not mix them up.
    ids = torch.tensor([[5, 7, 9, 0, 0, 0], [3, 4, 5, 6, 7, 8]])
    targets = torch.tensor([2, 0])

    def attribute(rows: np.ndarray, steps: int) -> Attributions:
        chosen = torch.from_numpy(rows)
        return integrated_gradients_tokens(model, ids[chosen], targets[chosen], steps, 4096)

    result = converged(attribute, 2, steps=16, max_steps=1024, tolerance=0.01)
    assert np.abs(result.attributions.delta).max() < 0.01
    assert result.attributions.scores[0, 3:].tolist() == [0.0, 0.0, 0.0]  # padding
    with torch.no_grad():
        change = model(ids) - EmbeddedZero(model)(ids)  # f(x) - f(baseline), per class
    expected = change[torch.arange(2), targets].numpy()
    np.testing.assert_allclose(result.attributions.scores.sum(axis=1), expected, atol=0.01)


SMALL_TEXT = {
    "mlp": MLPConfig(input_shape=(6,), num_classes=3, vocab_size=20, hidden_sizes=(8,), embedding_dim=8),
    "cnn": CNNConfig(input_shape=(6,), num_classes=3, vocab_size=20, embedding_dim=8, filters=4),
    "lstm": LSTMConfig(input_shape=(6,), num_classes=3, vocab_size=20, hidden_size=8, dense_size=8,
                       embedding_dim=8),
    "transformer": TransformerConfig(input_shape=(6,), num_classes=3, vocab_size=20, d_model=16, num_heads=2,
                                     num_layers=1, ff_size=32),
}  # fmt: skip


class EmbeddedZero(torch.nn.Module):
    """The model with every token embedding zero (the baseline), its masks from the real ids."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        layer = embedding_layer(self.model)
        handle = layer.register_forward_hook(lambda m, i, out: torch.zeros_like(out))
        try:
            return self.model(ids)
        finally:
            handle.remove()


def test_the_html_page_escapes_every_text_and_loads_nothing() -> None:
    hostile = WrongText(
        text='<script>alert("x")</script> & <img src=http://example.com/a.png>',
        true_class="<b>pos</b>",
        predicted='neg"',
        tokens=["<script>", "&amp;", '"quoted"'],
        scores=[0.5, -0.25, 0.0],
    )
    page = wrong_texts_html("title <i>", [hostile], {"<c>": [("<tok>", 1.0)]})
    assert "<script" not in page
    assert "<img" not in page
    assert "<b>pos" not in page
    assert "<tok>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&amp;amp;" in page  # the token "&amp;" shown as typed
    assert "http" not in page.replace("http://example.com", "")  # no external resource of its own
    assert page.count('<span style="background: rgba(220,40,40,') == 1  # the positive token only red
    empty = wrong_texts_html("t", [], {})
    assert "no wrong prediction in the test split" in empty
