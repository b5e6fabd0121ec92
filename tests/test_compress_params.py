"""``compress:`` settings: bad values are refused naming the key."""

from __future__ import annotations

import pytest

from components.config import validate_params
from components.errors import ParamsError


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("method", "int4"),
        ("prune_amount", 1.0),
        ("prune_amount", 0.0),
        ("max_accuracy_drop", 2.0),
        ("max_accuracy_drop", -0.1),
        ("calibration_batches", 0),
        ("finetune_epochs", -1),
        ("bogus", 1),
    ],
)
def test_bad_compress_settings_are_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ParamsError, match=rf"compress\.{key}"):
        validate_params({"compress": {key: value}})


def test_the_defaults_accept_half_a_point_and_choose_per_architecture() -> None:
    settings = validate_params({}).compress
    assert (settings.method, settings.max_accuracy_drop) == ("auto", 0.005)
    assert validate_params({"compress": {"method": "static_int8", "max_accuracy_drop": 0.0}}).compress
