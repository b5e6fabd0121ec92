"""A registration's decision: the record kept on the model version (so registering the same weights
again returns it) and ``reports/registration.json``, the ``register`` stage's output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion

from components.atomic import atomic_write_json

REPORT = "registration.json"
# Tags on each model version.
WEIGHTS_TAG = "weights.sha256"
DECISION_TAG = "registry.decision"
REASON_TAG = "registry.reason"


@dataclass(frozen=True)
class Decision:
    """What registering one architecture did (also stored as tags on its version)."""

    architecture: str
    model_name: str
    version: str
    weights_sha256: str
    metric: str
    value: float
    """The new version's ``metric`` on the test split, scored through the registered model."""
    previous_champion: str | None
    previous_champion_value: float | None
    promoted: bool
    reason: str


def record_decision(client: mlflow.MlflowClient, decision: Decision, run_id: str | None) -> None:
    """The decision as version tags (the record re-registration returns) and on the run."""
    payload = {
        DECISION_TAG: "promoted" if decision.promoted else "kept",
        REASON_TAG: decision.reason,
        "registry.metric": decision.metric,
        "registry.value": repr(decision.value),
        "registry.previous_champion": decision.previous_champion or "",
        "registry.previous_champion_value": repr(decision.previous_champion_value),
    }
    for key, value in payload.items():
        client.set_model_version_tag(decision.model_name, decision.version, key, value)
    if run_id:
        client.set_tag(run_id, "registry.version", f"{decision.model_name}/{decision.version}")
        client.set_tag(run_id, REASON_TAG, decision.reason)


def recorded_decision(version: ModelVersion, arch: str, metric: str) -> Decision:
    tags = version.tags
    previous_value = tags.get("registry.previous_champion_value", "None")
    return Decision(
        architecture=arch,
        model_name=version.name,
        version=str(version.version),
        weights_sha256=tags[WEIGHTS_TAG],
        metric=tags.get("registry.metric", metric),
        value=float(tags.get("registry.value", "nan")),
        previous_champion=tags.get("registry.previous_champion") or None,
        previous_champion_value=None if previous_value == "None" else float(previous_value),
        promoted=tags[DECISION_TAG] == "promoted",
        reason=tags.get(REASON_TAG, ""),
    )


def write_report(
    decisions: Sequence[Decision], champion: ModelVersion | None, path: Path | str
) -> dict[str, Any]:
    """``reports/registration.json``: every decision in order and where ``champion`` points now.

    Only registry facts, no timestamps: registering the same weights again writes the same bytes.
    """
    report = {
        "model_name": decisions[0].model_name if decisions else None,
        "champion": {
            "version": str(champion.version),
            "architecture": champion.tags.get("architecture"),
            "weights_sha256": champion.tags.get(WEIGHTS_TAG),
        }
        if champion
        else None,
        "decisions": [asdict(d) for d in decisions],
    }
    atomic_write_json(path, report)
    return report
