"""DP-SGD through the real train, evaluate and register functions on the digits: what is recorded,
that the ε reported is Opacus's accountant on the recorded figures, and that resuming keeps it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient
from opacus.accountants import create_accountant
from safetensors.torch import load_file

from components.config import Params, validate_params
from components.evaluation.evaluate import PRIVACY, evaluate
from components.models import build_model, model_config
from components.registry.register import register
from components.training.artifacts import WEIGHTS
from components.training.train import train
from tests.conftest import tiny_params
from tests.test_training import CrashAt

pytestmark = pytest.mark.usefixtures("tracking_uri")

STEPS_PER_EPOCH = 10  # digits: 1,257 training examples at batch 128


def _params(**train_settings: Any) -> Params:
    raw = tiny_params(max_epochs=2, early_stopping_patience=0, **train_settings)
    raw["train"]["privacy"] = {**raw["train"]["privacy"], "enabled": True, "target_epsilon": 3.0}
    raw["train"]["privacy"]["accountant"] = "rdp"
    return validate_params(raw)


def _train(project: Path, out: str, params: Params, **kwargs: Any) -> Any:
    return train(
        params, "mlp", project / "data" / "prepared", project / out,
        work_root=project / ".work", project_root=project, **kwargs,
    )  # fmt: skip


def _recomputed_epsilon(privacy: dict[str, Any]) -> float:
    accountant = create_accountant(privacy["accountant"])
    accountant.history = [(privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"])]
    return float(accountant.get_epsilon(delta=privacy["delta"]))


def test_private_training_records_its_budget_everywhere(digits_project: Path) -> None:
    params = _params()
    result = _train(digits_project, "models/mlp", params)
    privacy = result.info["privacy"]
    assert privacy["steps"] == result.info["global_steps"] == 2 * STEPS_PER_EPOCH
    assert (privacy["delta"], privacy["sample_rate"], privacy["max_grad_norm"]) == (1e-5, 0.1, 1.0)
    # The ε reported is Opacus's accountant evaluated independently on the recorded figures.
    assert privacy["epsilon"] == pytest.approx(_recomputed_epsilon(privacy), rel=1e-9)
    assert 0 < privacy["epsilon"] <= 3.0
    # The saved weights are the plain network's: they load into it as they are.
    trained = build_model("mlp", model_config("mlp", params.models, (1, 8, 8), 10))
    trained.load_state_dict(load_file(str(digits_project / "models" / "mlp" / WEIGHTS)))
    run = MlflowClient().get_run(result.run_id).data
    assert run.params["privacy.noise_multiplier"] == str(privacy["noise_multiplier"])
    assert run.params["train.privacy.enabled"] == "True"
    assert run.metrics["privacy_epsilon"] == pytest.approx(privacy["epsilon"])

    metrics = evaluate(
        params, "mlp", digits_project / "data" / "prepared", digits_project / "models" / "mlp",
        digits_project / "reports" / "mlp", project_root=digits_project,
    )  # fmt: skip
    assert metrics["privacy_epsilon"] == pytest.approx(privacy["epsilon"])
    attack = json.loads((digits_project / "reports" / "mlp" / PRIVACY).read_text())
    assert attack["members"] == attack["non_members"] == 270  # the test split's size
    assert 0 <= attack["advantage"] <= 1
    assert 0 <= attack["auc"] <= 1
    assert MlflowClient().get_run(result.run_id).data.metrics["mia_advantage"] == attack["advantage"]

    decision = register(
        params, "mlp", digits_project / "models" / "mlp", digits_project / "data" / "prepared",
        project_root=digits_project,
    )  # fmt: skip
    assert decision.model_name == "digits-classifier-dp"
    tags = MlflowClient().get_model_version(decision.model_name, decision.version).tags
    assert tags["privacy"] == "dp"
    assert float(tags["privacy.delta"]) == 1e-5
    assert float(tags["privacy.epsilon"]) == pytest.approx(privacy["epsilon"], rel=1e-3)


def test_a_resumed_private_run_reports_the_epsilon_and_weights_of_an_uninterrupted_one(
    digits_project: Path,
) -> None:
    params = _params(checkpoint_every_n_steps=3, steps_per_call=4)
    whole = _train(digits_project, "models/whole", params)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(digits_project, "models/resumed", params, callbacks=[CrashAt(14)])
    resumed = _train(digits_project, "models/resumed", params)
    assert resumed.info["resumed_from_step"] == 14
    assert resumed.info["privacy"]["steps"] == whole.info["privacy"]["steps"] == 2 * STEPS_PER_EPOCH
    assert resumed.info["privacy"]["epsilon"] == whole.info["privacy"]["epsilon"]
    # Same Poisson draws and the same noise after the resume: the same weights.
    weights_whole = load_file(str(digits_project / "models" / "whole" / WEIGHTS))
    weights_resumed = load_file(str(digits_project / "models" / "resumed" / WEIGHTS))
    for name, tensor in weights_whole.items():
        torch.testing.assert_close(weights_resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
