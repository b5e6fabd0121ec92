"""The four architectures on token input: padding never changes a prediction, gradients reach every
weight but the [PAD] row, each learns a trivially separable token task, and the params keys that
only one kind of input reads are refused with the other."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from components.config import ALL_ARCHITECTURES, Architecture, ModelsParams, is_text_source, validate_params
from components.errors import ParamsError
from components.models import (
    PAD_ID,
    build_model,
    class_probabilities,
    config_from_dict,
    config_to_dict,
    model_config,
)

VOCAB = 50
# Each architecture with its defaults, plus the variants that take another path through forward().
VARIANTS: list[tuple[Architecture, dict[str, Any]]] = [
    *((arch, {}) for arch in ALL_ARCHITECTURES),
    ("transformer", {"pool": "cls"}),
    ("lstm", {"num_layers": 2}),
    ("cnn", {"kernel_sizes": [2, 7]}),  # a window wider than the shortest sentence
]
SENTENCES = [[7, 3, 9], [4], [12, 8, 8, 30, 2, 6, 11, 5, 1, 19, 22, 40], [5, 5], [33, 1, 2, 3, 4, 6, 7]]


def _padded(sentences: list[list[int]], length: int) -> torch.Tensor:
    """(B, length) ids, each sentence right-padded with PAD_ID."""
    x = torch.full((len(sentences), length), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(sentences):
        x[row, : len(ids)] = torch.tensor(ids)
    return x


def _model(arch: Architecture, section: dict[str, Any], length: int = 30, vocab: int = VOCAB) -> nn.Module:
    models = ModelsParams.model_validate({arch: section})
    return build_model(arch, model_config(arch, models, (length,), num_classes=4, vocab_size=vocab))


def _trained_looking(model: nn.Module) -> nn.Module:
    """Random weights away from the initial ones (the [PAD] row too: the models must not rely on it)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


@pytest.mark.parametrize(("arch", "section"), VARIANTS)
def test_padding_never_changes_the_probabilities(arch: Architecture, section: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = _trained_looking(_model(arch, section))
    with torch.no_grad():  # the transformer's inference fast path
        short, long = (class_probabilities(model(_padded(SENTENCES, t))) for t in (12, 30))
        exact = torch.cat([class_probabilities(model(_padded([ids], len(ids)))) for ids in SENTENCES])
    torch.testing.assert_close(short, long, rtol=0, atol=1e-5)
    torch.testing.assert_close(exact, long, rtol=0, atol=1e-5)
    with torch.enable_grad():  # the ordinary path, as when training
        torch.testing.assert_close(
            class_probabilities(model(_padded(SENTENCES, 30))), long, rtol=0, atol=1e-5
        )
    # The tokens do matter: changing the last real token of a sentence changes its logits.
    changed = [[*ids[:-1], ids[-1] + 1] for ids in SENTENCES]
    with torch.no_grad():
        difference = model(_padded(changed, 30)) - model(_padded(SENTENCES, 30))  # (B, K)
    assert (difference.abs().amax(dim=1) > 1e-3).all()


@pytest.mark.parametrize(("arch", "section"), VARIANTS)
def test_an_all_padding_row_gives_finite_probabilities(arch: Architecture, section: dict[str, Any]) -> None:
    model = _trained_looking(_model(arch, section))
    with torch.no_grad():
        probabilities = class_probabilities(model(_padded([[], [3, 4]], 6)))
    assert probabilities.shape == (2, 4)
    assert torch.isfinite(probabilities).all()


@pytest.mark.parametrize(("arch", "section"), VARIANTS)
def test_gradients_reach_every_weight_but_the_pad_row(arch: Architecture, section: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = _model(arch, section).train()
    logits = model(_padded(SENTENCES, 30))
    assert logits.shape == (len(SENTENCES), 4)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 0])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, f"{name}: no gradient"
    (embedding,) = (m for m in model.modules() if isinstance(m, nn.Embedding))
    assert embedding.weight.grad is not None
    assert torch.equal(embedding.weight.grad[PAD_ID], torch.zeros_like(embedding.weight.grad[PAD_ID]))


def _presence_task(n: int, generator: torch.Generator, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` right-padded sentences of 1..length ids; class 1 iff id 5 occurs in it."""
    ids = torch.randint(6, 20, (n, length), generator=generator)  # (n, length), no 5 yet
    labels = torch.arange(n) % 2
    spot = torch.randint(0, length, (n,), generator=generator)
    ids[labels == 1, spot[labels == 1]] = 5
    lengths = torch.maximum(torch.randint(1, length + 1, (n,), generator=generator), spot + 1)
    ids[torch.arange(length).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD_ID
    return ids, labels


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_each_architecture_learns_whether_a_token_is_present(arch: Architecture) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x, labels = _presence_task(256, generator)
    held_out, held_out_labels = _presence_task(256, generator)
    small = {
        "mlp": {"hidden_sizes": [32]},
        "cnn": {"filters": 16},
        "lstm": {"hidden_size": 32},
        "transformer": {"d_model": 32, "num_heads": 4, "ff_size": 64, "num_layers": 1},
    }
    models = ModelsParams.model_validate({arch: small[arch]})
    config = model_config(arch, models, (10,), num_classes=2, vocab_size=20)
    model = build_model(arch, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(held_out).argmax(dim=1) == held_out_labels).float().mean().item()
    assert accuracy >= 0.9, f"{arch}: held-out accuracy {accuracy:.2f}"


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_token_configs_round_trip_and_size_the_embedding_by_the_vocabulary(arch: Architecture) -> None:
    config = model_config(arch, ModelsParams(), (100,), num_classes=3, vocab_size=1000)
    assert (config.input_shape, config.vocab_size) == ((100,), 1000)
    again = config_from_dict(arch, config_to_dict(config))
    assert again == config
    (embedding,) = (m for m in build_model(arch, again).modules() if isinstance(m, nn.Embedding))
    assert (embedding.num_embeddings, embedding.padding_idx) == (1000, PAD_ID)
    width = getattr(config, "d_model" if arch == "transformer" else "embedding_dim")
    assert embedding.embedding_dim == width == 64


def test_the_transformer_positions_come_from_the_sequence_length() -> None:
    model = _model("transformer", {}, length=16)
    assert model.positions.shape == (1, 16, 64)
    with pytest.raises(ValueError, match="17 tokens per sequence, but its position table holds 16"):
        model(torch.ones(2, 17, dtype=torch.long))


def test_an_image_transformer_card_from_before_keeps_loading() -> None:
    """model.json files written before the position table followed the data hold max_seq_len."""
    card = config_to_dict(model_config("transformer", ModelsParams(), (1, 8, 8), num_classes=10))
    again = config_from_dict("transformer", {**card, "max_seq_len": 256})
    assert again == config_from_dict("transformer", card)


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_token_input_needs_a_sequence_shape_and_more_than_padding(arch: Architecture) -> None:
    with pytest.raises(ValueError, match=rf"{arch}: token input \(vocab_size 50\) needs input_shape \(T,\)"):
        model_config(arch, ModelsParams(), (1, 8, 8), num_classes=3, vocab_size=50)
    with pytest.raises(ValueError, match="leaves no token besides"):
        model_config(arch, ModelsParams(), (12,), num_classes=3, vocab_size=1)


@pytest.mark.parametrize(
    ("source", "key", "value"),
    [
        ("digits", "mlp.embedding_dim", 32),
        ("digits", "cnn.embedding_dim", 32),
        ("digits", "cnn.kernel_sizes", [3]),
        ("npz", "cnn.filters", 8),
        ("mnist", "lstm.embedding_dim", 16),
        ("text", "cnn.channels", [16]),
        ("text", "cnn.dense_size", 32),
        ("text", "transformer.patch_size", 7),
    ],
)
def test_a_key_the_data_kind_never_reads_is_refused_by_name(source: str, key: str, value: Any) -> None:
    arch, name = key.split(".")
    other = "text" if name in {"embedding_dim", "kernel_sizes", "filters"} else "image"
    raw = {"data": {"source": source}, "models": {arch: {name: value}}}
    with pytest.raises(ParamsError, match=rf"models\.{arch}\.{name} applies to {other} data only"):
        validate_params(raw)


def test_keys_at_their_defaults_and_keys_both_kinds_read_are_accepted() -> None:
    defaults = ModelsParams().model_dump()  # every key spelled out, as params.yaml does
    for source in ("digits", "text"):
        validate_params({"data": {"source": source}, "models": defaults})
    shared = {"lstm": {"hidden_size": 8}, "cnn": {"dropout": 0.5}, "transformer": {"d_model": 32}}
    for source in ("digits", "text"):
        params = validate_params({"data": {"source": source}, "models": shared})
        assert params.models.cnn.dropout == 0.5
    assert is_text_source("text")
    assert not is_text_source("digits")


def test_every_misplaced_key_is_listed_at_once() -> None:
    raw = {"data": {"source": "text"}, "models": {"cnn": {"channels": [8]}, "transformer": {"patch_size": 2}}}
    with pytest.raises(ParamsError) as caught:
        validate_params(raw, source="params.yaml")
    lines = str(caught.value).splitlines()
    assert lines[0] == "params.yaml: invalid settings:"
    assert [line.split()[0] for line in lines[1:]] == ["models.cnn.channels", "models.transformer.patch_size"]
