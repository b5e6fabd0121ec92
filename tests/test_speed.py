"""The speed settings: per-device defaults resolved on this (CPU) machine, and bad values rejected
with their key before anything runs."""

from __future__ import annotations

import pytest
import torch

from components.config import TrainParams, validate_params
from components.errors import ParamsError
from components.training.speed import float32_matmul_precision, resolve_speed
from tests.conftest import default_params

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")


def test_auto_keeps_exact_fp32_on_the_cpu() -> None:
    speed = resolve_speed(TrainParams(), "cnn")
    assert (speed.device, speed.precision, speed.matmul_precision) == ("cpu", "32-true", "highest")
    assert (speed.channels_last, speed.compile) == (False, False)


def test_explicit_values_win_and_channels_last_is_for_the_cnn_only() -> None:
    params = TrainParams(precision="bf16-mixed", matmul_precision="medium", channels_last=True, compile=True)
    cnn, mlp = resolve_speed(params, "cnn"), resolve_speed(params, "mlp")
    assert (cnn.precision, cnn.matmul_precision, cnn.channels_last, cnn.compile) == (
        "bf16-mixed",
        "medium",
        True,
        True,
    )
    assert mlp.channels_last is False


def test_matmul_precision_is_set_for_the_block_and_restored() -> None:
    before = torch.get_float32_matmul_precision()
    with float32_matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("strategy", "fsdp", "'auto' or 'ddp'"),
        ("num_nodes", 0, "greater than or equal to 1"),
        ("precision", "bf16", "'auto'"),
        ("channels_last", "yes", "channels_last"),
        ("compile", "true", "boolean"),
        ("matmul_precision", "low", "'highest'"),
    ],
)
def test_bad_speed_settings_name_their_key(key: str, value: object, fragment: str) -> None:
    raw = default_params()
    raw["train"][key] = value
    with pytest.raises(ParamsError) as info:
        validate_params(raw)
    assert f"train.{key}" in str(info.value)
    assert fragment in str(info.value)
