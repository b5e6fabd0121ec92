"""sweep.space in params.yaml: each refused key is named, with the rule it breaks."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import Params, validate_params
from components.errors import ParamsError
from components.sweep.space import with_values


def _sweep(space: dict[str, Any], architecture: str = "cnn", **data: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"sweep": {"architecture": architecture, "space": space}}
    if data:
        raw["data"] = data
    return raw


def test_the_default_space_and_a_mixed_space_are_accepted() -> None:
    assert "train.learning_rate" in Params().sweep.space
    params = validate_params(
        _sweep(
            {
                "train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                "train.max_epochs": {"low": 1, "high": 5},
                "models.cnn.dropout": {"low": 0.0, "high": 0.5},
                "models.cnn.channels": {"choices": [[8, 16], [16, 32]]},
                "train.accelerator": {"choices": ["cpu"]},
                "models.cnn.padding": {"choices": ["auto", 0, 1]},  # an auto key: auto among choices
            }
        )
    )
    assert params.sweep.space["models.cnn.channels"].choices == [[8, 16], [16, 32]]  # type: ignore[union-attr]


# (space, substrings the error must contain: the key and the rule)
REFUSED: dict[str, tuple[dict[str, Any], list[str]]] = {
    "unknown key": (
        {"train.learning_rat": {"low": 0.1, "high": 0.2}},
        ["sweep.space.train.learning_rat", "unknown key"],
    ),
    "another architecture": (
        {"models.mlp.dropout": {"low": 0.0, "high": 0.5}},
        ["sweep.space.models.mlp.dropout", "models.cnn.*"],
    ),
    "outside train/models": (
        {"evaluate.batch_size": {"choices": [64]}},
        ["sweep.space.evaluate.batch_size", "only train.*"],
    ),
    "architectures": ({"train.architectures": {"choices": [["mlp"]]}}, ["sweep.space.train.architectures"]),
    "a path below a key": (
        {"models.cnn.dropout.rate": {"low": 0.0, "high": 0.5}},
        ["sweep.space.models.cnn.dropout.rate", "unknown key"],
    ),
    "range on a list key": (
        {"models.cnn.channels": {"low": 1, "high": 4}},
        ["sweep.space.models.cnn.channels", "numeric"],
    ),
    "range on a bool key": (
        {"train.compile": {"low": 0, "high": 1}},
        ["sweep.space.train.compile", "numeric"],
    ),
    "range below the bound": (
        {"models.cnn.dropout": {"low": -0.5, "high": 0.5}},
        ["sweep.space.models.cnn.dropout", "low -0.5", "greater than or equal to 0"],
    ),
    "range above the bound": (
        {"models.cnn.dropout": {"low": 0.1, "high": 1.0}},
        ["sweep.space.models.cnn.dropout", "high 1.0", "less than 1"],
    ),
    "int key, float range": (
        {"train.batch_size": {"low": 16.0, "high": 64}},
        ["sweep.space.train.batch_size", "integer low and high"],
    ),
    "int range below 1": (
        {"train.batch_size": {"low": 0, "high": 64}},
        ["sweep.space.train.batch_size", "low 0"],
    ),
    "bad choice": (
        {"train.batch_size": {"choices": [32, "big"]}},
        ["sweep.space.train.batch_size", 'choice "big"'],
    ),
    "repeated choice": (
        {"train.batch_size": {"choices": [32, 32]}},
        ["sweep.space.train.batch_size", "repeat"],
    ),
    "image key with text": (
        {"models.cnn.channels": {"choices": [[8]]}},
        ["sweep.space.models.cnn.channels", "image data only"],
    ),
    "low not below high": (
        {"train.learning_rate": {"low": 0.1, "high": 0.1}},
        ["sweep.space.train.learning_rate", "must be < high"],
    ),
    "log from zero": (
        {"train.weight_decay": {"low": 0.0, "high": 0.1, "log": True}},
        ["sweep.space.train.weight_decay", "low > 0"],
    ),
    "range on an auto key": (
        {"models.cnn.padding": {"low": 0, "high": 1}},
        ["sweep.space.models.cnn.padding", 'holds "auto"', "give choices"],
    ),
    "padding beyond same": (
        {"models.cnn.padding": {"choices": [0, 2]}},
        ["sweep.space.models.cnn.padding", "choice 2"],
    ),
    "empty choices": ({"train.batch_size": {"choices": []}}, ["sweep.space.train.batch_size", "choices"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_bad_space_key_is_refused_naming_it(case: str) -> None:
    space, expected = REFUSED[case]
    data = {"source": "text", "path": "t.tsv"} if case == "image key with text" else {}
    with pytest.raises(ParamsError) as error:
        validate_params(_sweep(space, **data), source="params.yaml")
    for part in expected:
        assert part in str(error.value), str(error.value)


def test_trial_values_go_through_the_schema() -> None:
    params = with_values(Params(), {"train.learning_rate": 0.02, "models.mlp.hidden_sizes": [64]}, "trial 0")
    assert params.train.learning_rate == 0.02
    assert params.models.mlp.hidden_sizes == [64]
    with pytest.raises(ParamsError, match="trial 1: invalid settings"):
        with_values(Params(), {"models.transformer.d_model": 12}, "trial 1")  # not divisible by 8 heads
