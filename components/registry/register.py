"""Register a trained model in the MLflow Model Registry and decide whether it becomes ``champion``.

The functions behind the ``register`` stage and the flow's register task (:func:`register_all`).
For one architecture (:func:`register`):

1. Package ``models/<arch>/`` as an MLflow ``pyfunc`` model (:mod:`components.registry.package`):
   its weights, config and statistics with a copy of the architecture code; raw pixels in, class
   ids and probabilities out, normalisation included (a text model: raw strings in, encoded by its
   tokenizer as preprocessing encoded them); logged to the run that trained it, with a signature
   and an input example.
2. Register it as a new version of ``register.model_name`` (one registered model per dataset) and
   point the alias ``challenger`` at it. Versions carry the lineage tags (architecture, data
   version, git commit, Prefect flow run, weights hash).
3. Score the new version and the current ``champion`` through the registered models on the same
   test split's raw inputs (:mod:`components.registry.judge`), and move ``champion`` only if the
   new version is strictly better on ``register.metric``. The decision and its reason are tagged on
   the version.

Private models (DP-SGD, ``train.privacy.enabled``) go to ``<name>-dp``
(:func:`~components.naming.registered_model_name`), tagged ``privacy=dp``, ``privacy.epsilon``
and ``privacy.delta``: they compete only with each other. A model folder whose training does not
match ``train.privacy.enabled`` (trained before the setting changed) is refused.

A compressed model (``models/<arch>-compressed``, when ``compress@<arch>`` accepted it) follows its
float model through the same steps and gate, as its own version tagged ``compression=<method>``.

Idempotent: a version is identified by the sha256 of its weights, so registering the same weights
again adds no version and returns the decision recorded the first time.

Safe under concurrency: steps 2 and 3 run under a lease on the registered model
(:mod:`components.registry.lease`), so two pipelines registering into one tracking server at once
neither duplicate a version nor leave the worse model as ``champion``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from components.compression.folder import compressed_folder, is_accepted, load_compressed, read_card
from components.config import Architecture, Params
from components.data.prepared import PreparedSplit, load_prepared, require_split
from components.hashing import sha256_file
from components.naming import experiment_name, registered_model_name
from components.registry.decisions import (
    DECISION_TAG,
    WEIGHTS_TAG,
    Decision,
    record_decision,
    recorded_decision,
    write_report,
)
from components.registry.judge import CHALLENGER, CHAMPION, incomparable_or_raise, raw_inputs, score
from components.registry.lease import registry_lease
from components.registry.package import log_and_register, training_code_tags
from components.registry.private import check_privacy_matches, privacy_tags
from components.tracking import Tracker, fluent_tracking
from components.tracking_server import tracking_error
from components.training.artifacts import (
    TRAIN_INFO,
    WEIGHTS,
    check_same_data,
    load_trained_model,
    read_train_info,
)

COMPRESSION_TAG = "compression"  # on a compressed model's version: the method (static_int8, prune)


def register(
    params: Params,
    arch: Architecture,
    model_dir: Path | str,
    prepared_dir: Path | str,
    *,
    project_root: Path | str = ".",
    tags: Mapping[str, str] | None = None,
) -> Decision:
    """Register ``model_dir`` (if its weights are new) and gate ``champion``; return the decision."""
    candidate = _candidate(arch, Path(model_dir), Path(prepared_dir))
    check_privacy_matches(params, arch, Path(model_dir), candidate.trained.info)
    tracker = Tracker.open(experiment_name(params), project_root)
    with fluent_tracking(tracker.uri):
        try:
            with registry_lease(tracker.client, registered_model_name(params)):
                decision = _register_under_lease(tracker, params, candidate, project_root, tags)
        except MlflowException as exc:
            raise tracking_error(tracker.uri, exc) from exc
    return decision


def register_all(
    params: Params,
    models_dir: Path | str,
    prepared_dir: Path | str,
    report_path: Path | str,
    *,
    project_root: Path | str = ".",
    tags: Mapping[str, str] | None = None,
    on_decision: Callable[[Decision], None] = lambda decision: None,
) -> dict[str, Any]:
    """The ``register`` stage: every architecture of ``train.architectures``, in that order, then the
    report at ``report_path``; returns the report. Every model folder is checked first, so a broken
    one fails the stage before any version is added. ``on_decision`` hears each decision as made."""
    archs = params.train.architectures
    folders = []  # each float model, then its compressed one when compress@<arch> accepted it
    for arch in archs:
        folders.append((arch, Path(models_dir) / arch))
        compressed = compressed_folder(models_dir, arch)
        if is_accepted(compressed):
            folders.append((arch, compressed))
    for arch, folder in folders:
        check_registrable(arch, folder, prepared_dir)
    for arch in archs:
        trained = Path(models_dir) / arch
        check_privacy_matches(params, arch, trained, read_train_info(trained / TRAIN_INFO))
    decisions = []
    for arch, folder in folders:
        decision = register(params, arch, folder, prepared_dir, project_root=project_root, tags=tags)
        on_decision(decision)
        decisions.append(decision)
    return write_report(decisions, champion_version(params, project_root), report_path)


def check_registrable(arch: Architecture, model_dir: Path | str, prepared_dir: Path | str) -> None:
    """What :func:`register` checks before it touches the registry: the model folder is readable and
    was trained on ``prepared_dir``'s data, which has a test split. The ``register`` stage checks
    every architecture first, so a broken one fails it before any other is registered."""
    _candidate(arch, Path(model_dir), Path(prepared_dir))


def _candidate(arch: Architecture, model_dir: Path, prepared_dir: Path) -> _Candidate:
    """``model_dir``: ``models/<arch>``, or ``models/<arch>-compressed`` (rebuilt over the float
    model beside it, registered under the label ``<arch>-compressed`` with a ``compression`` tag)."""
    card = read_card(model_dir)
    trained = load_trained_model(model_dir.parent / arch if card else model_dir)
    extra: dict[str, str] = {}
    if card:
        trained = load_compressed(model_dir, trained).trained
        extra = {COMPRESSION_TAG: str(card["method"])}
    prepared = load_prepared(prepared_dir)
    test = require_split(prepared, "test", prepared_dir)
    version = check_same_data(trained, prepared, prepared_dir, f"re-run train@{arch} first")
    return _Candidate(
        arch=arch,
        label=f"{arch}-compressed" if card else arch,
        extra_tags=extra,
        trained=trained,
        test=test,
        inputs=raw_inputs(test, prepared.stats, prepared_dir),
        class_names=list(prepared.stats.class_names),
        data_version=version,
        weights_sha=sha256_file(model_dir / WEIGHTS),
    )


@dataclass(frozen=True)
class _Candidate:
    """A trained model about to be registered, and the test data it is judged on."""

    arch: Architecture
    label: str  # the architecture, or <arch>-compressed: the decision's name in registration.json
    extra_tags: dict[str, str]  # compression=<method> for a compressed model
    trained: Any
    test: PreparedSplit
    inputs: np.ndarray | pd.DataFrame  # the test split raw: (N, *image_shape) float32 pixels, or texts
    class_names: list[str]
    data_version: str
    weights_sha: str


def _register_under_lease(
    tracker: Tracker,
    params: Params,
    candidate: _Candidate,
    project_root: Path | str,
    tags: Mapping[str, str] | None,
) -> Decision:
    """Steps 2 and 3 of the module docstring; the caller holds the registry lease."""
    client = tracker.client
    name = registered_model_name(params)
    metric = params.register.metric
    arch, weights_sha, version = candidate.arch, candidate.weights_sha, candidate.data_version
    inputs, labels, class_names = candidate.inputs, candidate.test.labels, candidate.class_names
    _ensure_registered_model(client, name, params)
    existing = _version_with_weights(client, name, weights_sha)
    if existing is not None and existing.tags.get(DECISION_TAG):
        return recorded_decision(existing, candidate.label, metric)
    if existing is None:
        version_tags = {
            "architecture": arch,
            "data.source": params.data.source,
            "data.version": version,
            WEIGHTS_TAG: weights_sha,
            **training_code_tags(candidate.trained.info, project_root),
            **privacy_tags(candidate.trained.info),
            **candidate.extra_tags,
            **(tags or {}),
        }
        example = inputs[:2] if isinstance(inputs, np.ndarray) else inputs.head(3)
        existing = log_and_register(tracker, candidate.trained, name, example, version_tags)
    new = existing.version
    client.set_registered_model_alias(name, CHALLENGER, new)
    value = score(f"models:/{name}/{new}", inputs, labels, metric, class_names)
    champion, champion_value, promoted, reason = _gate(client, name, new, value, candidate, metric)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, new)
    decision = Decision(
        architecture=candidate.label,
        model_name=name,
        version=str(new),
        weights_sha256=weights_sha,
        metric=metric,
        value=value,
        previous_champion=str(champion.version) if champion else None,
        previous_champion_value=champion_value,
        promoted=promoted,
        reason=reason,
    )
    record_decision(client, decision, existing.run_id)
    return decision


def _gate(
    client: mlflow.MlflowClient, name: str, new: str, value: float, candidate: _Candidate, metric: str
) -> tuple[ModelVersion | None, float | None, bool, str]:
    """The current champion, its score on the candidate's test data, whether version ``new``
    (scoring ``value``) takes the alias, and why."""
    champion = _alias_version(client, name, CHAMPION)
    if champion is None:
        return None, None, True, f"no {CHAMPION} yet"
    champion_uri = f"models:/{name}/{champion.version}"
    inputs, class_names = candidate.inputs, candidate.class_names
    try:
        champion_value = score(champion_uri, inputs, candidate.test.labels, metric, class_names)
    except (MlflowException, ValueError, RuntimeError, KeyError) as exc:
        mismatch = incomparable_or_raise(exc, champion_uri, inputs, class_names, new_version=new)
        return (
            champion,
            None,
            True,
            f"{CHAMPION} v{champion.version} cannot be compared on this data: {mismatch}",
        )
    promoted = value > champion_value
    comparison = "beats" if promoted else "does not beat"
    reason = (
        f"{metric} {value:.4f} {comparison} {CHAMPION} v{champion.version}'s "
        f"{champion_value:.4f} on the same test data (data version {candidate.data_version[:12]})"
    )
    return champion, champion_value, promoted, reason


def _ensure_registered_model(client: mlflow.MlflowClient, name: str, params: Params) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name,
                tags={"data.source": params.data.source},
                description=f"Classifiers trained on {params.data.source}; alias {CHAMPION} is the best.",
            )
        except MlflowException:  # created concurrently
            client.get_registered_model(name)


def _version_with_weights(client: mlflow.MlflowClient, name: str, weights_sha: str) -> ModelVersion | None:
    found = client.search_model_versions(f"name = '{name}' and tags.`{WEIGHTS_TAG}` = '{weights_sha}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_version(params: Params, project_root: Path | str = ".") -> ModelVersion | None:
    """The version the ``champion`` alias points at, or None."""
    tracker = Tracker.open(experiment_name(params), project_root)
    return _alias_version(tracker.client, registered_model_name(params), CHAMPION)
