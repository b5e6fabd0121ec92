"""Private (DP-SGD) and non-private models in the registry: the tags a DP version carries, and the
check that a model folder was trained the way ``train.privacy.enabled`` says (the registered name,
``<name>-dp`` for private models, follows that setting: :func:`components.naming.registered_model_name`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.config import Architecture, Params
from components.errors import DataValidationError


def privacy_tags(info: Mapping[str, Any]) -> dict[str, str]:
    """``privacy=dp``, ``privacy.epsilon`` (spent) and ``privacy.delta`` of a DP model; {} otherwise."""
    privacy = info.get("privacy")
    if not privacy:
        return {}
    return {
        "privacy": "dp",
        "privacy.epsilon": f"{privacy['epsilon']:.4g}",
        "privacy.delta": f"{privacy['delta']:g}",
    }


def check_privacy_matches(
    params: Params, arch: Architecture, model_dir: Path, info: Mapping[str, Any]
) -> None:
    """Refuse a model trained with(out) DP when ``train.privacy.enabled`` says otherwise: it would be
    registered under the other kind's name."""
    private = bool(info.get("privacy"))
    if private != params.train.privacy.enabled:
        kind = "with" if private else "without"
        raise DataValidationError(
            model_dir / "train_info.json",
            f"the model was trained {kind} differential privacy but train.privacy.enabled is "
            f"{str(params.train.privacy.enabled).lower()}; re-run train@{arch}",
        )
