"""Private training's pure parts: settings refusals, δ and noise plan, ε accounting, the
membership-inference attack."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import create_accountant
from torch import nn

from components.config import PrivacyParams, validate_params
from components.errors import ParamsError
from components.privacy.dp import default_delta, plan_for, plan_privacy
from components.privacy.membership import attack_figures, membership_inference
from tests.conftest import default_params


def _with(**train: Any) -> dict[str, Any]:
    raw = default_params()
    raw["train"].update(train)
    raw["train"]["privacy"] = {**raw["train"]["privacy"], "enabled": True, "target_epsilon": 3.0}
    return raw


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ({"in_memory": False}, "train.in_memory"),
        ({"compile": True}, "train.compile"),
        ({"precision": "bf16-mixed"}, "train.precision"),
        ({"devices": 2}, "train.devices"),
        ({"num_nodes": 2}, "train.num_nodes"),
        ({"strategy": "ddp"}, "train.strategy"),
    ],
)
def test_settings_dp_cannot_honour_are_refused_naming_the_key(setting: dict[str, Any], key: str) -> None:
    with pytest.raises(ParamsError, match=f"{key}: .* refused with train.privacy.enabled"):
        validate_params(_with(**setting))


def test_the_defaults_with_privacy_on_are_accepted_and_epsilon_is_required() -> None:
    params = validate_params(_with())  # steps_per_call 16, in_memory, gradient_clip_val 1.0 as they are
    assert params.train.privacy.enabled
    assert params.train.steps_per_call == 16
    raw = _with()
    raw["train"]["privacy"]["target_epsilon"] = None
    with pytest.raises(ParamsError, match=r"train.privacy.target_epsilon: required"):
        validate_params(raw)


def test_delta_defaults_below_one_over_n_and_a_larger_one_is_refused() -> None:
    assert default_delta(8000) == pytest.approx(1e-5)
    assert default_delta(1257) == pytest.approx(1e-5)
    assert default_delta(50) == pytest.approx(1e-3)
    settings = PrivacyParams(enabled=True, target_epsilon=3.0, delta=0.01, accountant="rdp")
    with pytest.raises(ParamsError, match=r"train.privacy.delta: 0.01 must be below 1 / 100"):
        plan_privacy(settings, 100, 10, 2)


def test_an_unreachable_epsilon_and_a_batch_as_large_as_the_split_are_refused() -> None:
    tiny = PrivacyParams(enabled=True, target_epsilon=1e-6, accountant="rdp")
    with pytest.raises(ParamsError, match=r"train.privacy.target_epsilon"):
        plan_privacy(tiny, 1000, 100, 2)
    with pytest.raises(ParamsError, match=r"train.batch_size"):
        plan_privacy(PrivacyParams(enabled=True, target_epsilon=3.0), 100, 128, 2)


def test_the_text_transformer_is_refused_saying_why() -> None:
    raw = _with()
    raw["data"]["source"] = "text"
    with pytest.raises(ParamsError, match=r"text transformer cannot train with DP-SGD.*data-dependent shape"):
        plan_for(validate_params(raw), "transformer", 1000)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_the_planned_noise_spends_the_target_epsilon_over_the_planned_steps(accountant: str) -> None:
    settings = PrivacyParams(enabled=True, target_epsilon=3.0, accountant=accountant)  # type: ignore[arg-type]
    plan = plan_privacy(settings, 1257, 128, 5)
    assert (plan.steps_per_epoch, plan.planned_steps, plan.sample_rate) == (10, 50, 0.1)
    fresh = create_accountant(accountant)  # Opacus's accountant, independent of the training code
    fresh.history = [(plan.noise_multiplier, plan.sample_rate, plan.planned_steps)]
    spent = fresh.get_epsilon(delta=plan.delta)
    assert spent <= 3.0
    assert spent == pytest.approx(3.0, abs=0.05)
    fresh.history = [(plan.noise_multiplier, plan.sample_rate, plan.planned_steps // 2)]
    assert fresh.get_epsilon(delta=plan.delta) < spent  # stopping early spends less


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype(np.float32), rng.integers(0, 3, size=n)


def test_membership_inference_sees_a_memorising_model_and_not_a_random_one() -> None:
    torch.manual_seed(0)
    members, non_members = _data(100, 1), _data(120, 2)  # random labels: only memorising fits them

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 3))

    memorising, untrained = net(), net()
    optimizer = torch.optim.Adam(memorising.parameters(), lr=0.01)
    x, y = torch.from_numpy(members[0]), torch.from_numpy(members[1])
    for _ in range(400):
        optimizer.zero_grad()
        nn.functional.cross_entropy(memorising(x), y).backward()
        optimizer.step()
    device = torch.device("cpu")
    strong = membership_inference(memorising, members, non_members, device, 16, seed=0)
    weak = membership_inference(untrained, members, non_members, device, 16, seed=0)
    assert strong["members"] == strong["non_members"] == 100
    for figures in (strong, weak):
        assert 0.0 <= figures["auc"] <= 1.0
        assert 0.0 <= figures["advantage"] <= 1.0
    assert strong["advantage"] > 0.7
    assert weak["advantage"] < 0.3
    assert strong["auc"] > 0.8 > 0.65 > weak["auc"]


def test_attack_figures_at_the_extremes() -> None:
    assert attack_figures(np.array([0.1, 0.2]), np.array([1.0, 2.0])) == {"auc": 1.0, "advantage": 1.0}
    same = attack_figures(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    assert same == {"auc": 0.5, "advantage": 0.0}
