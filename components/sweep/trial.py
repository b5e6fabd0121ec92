"""One trial: the sweep's settings with the trial's suggestions, trained by the project's own
``train`` on the prepared train and validation splits, its value the validation metric of the
epoch whose weights training keeps (the lowest validation loss)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from components.config import Params, SpaceRange
from components.errors import ParamsError
from components.sweep.pruning import PruneOnMetric
from components.sweep.runs import RUN_ATTR, STUDY_TAG, TRIAL_TAG
from components.sweep.space import current_value, with_values
from components.training.train import train


@dataclass(frozen=True)
class Outcome:
    """How a trial ended."""

    number: int
    state: TrialState
    value: float | None  # the metric (None for a failed trial)
    values: dict[str, Any]  # the suggested values, by dotted key
    seconds: float
    run_id: str | None
    note: str = ""  # why it failed, or when it was pruned


def suggest(trial: optuna.Trial, params: Params) -> dict[str, Any]:
    """The trial's value of each ``sweep.space`` key. Choices that are not scalars (lists) travel
    through Optuna as JSON text, which its categorical distribution accepts."""
    values: dict[str, Any] = {}
    for key, spec in params.sweep.space.items():
        if isinstance(spec, SpaceRange):
            if isinstance(spec.low, int) and isinstance(spec.high, int) and not isinstance(spec.low, bool):
                values[key] = trial.suggest_int(key, spec.low, spec.high, log=spec.log)
            else:
                values[key] = trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log)
        elif not _encoded(spec):
            values[key] = trial.suggest_categorical(key, spec.choices)
        else:
            picked = trial.suggest_categorical(key, [json.dumps(c) for c in spec.choices])
            values[key] = json.loads(str(picked))
    return values


def _encoded(spec: object) -> bool:
    """Whether a space entry's choices travel as JSON text (some choice is not a scalar)."""
    choices = getattr(spec, "choices", None)
    return choices is not None and not all(
        c is None or isinstance(c, bool | int | float | str) for c in choices
    )


def decoded(params: Params, suggested: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as params.yaml holds them (JSON-encoded choices read back), by dotted key."""
    space = params.sweep.space
    return {
        key: json.loads(str(value)) if key in space and _encoded(space[key]) else value
        for key, value in suggested.items()
    }


def starting_point(params: Params) -> dict[str, Any] | None:
    """params.yaml's own value of every space key, as Optuna params, when each lies in the space
    (within the range, or among the choices); else None."""
    point: dict[str, Any] = {}
    for key, spec in params.sweep.space.items():
        _, value = current_value(params, key)
        if isinstance(spec, SpaceRange):
            if not spec.low <= value <= spec.high:
                return None
            point[key] = value
        elif value not in spec.choices:
            return None
        else:
            point[key] = json.dumps(value) if _encoded(spec) else value
    return point


def objective_value(info: dict[str, Any], metric: str) -> float:
    """``metric`` at the epoch of the lowest validation loss (the weights ``train`` keeps)."""
    rows = [row for row in info["history"] if metric in row and "val_loss" in row]
    if not rows:
        raise ParamsError(f"sweep.metric: {metric} was not logged by the training (no validation epochs)")
    return float(min(rows, key=lambda row: row["val_loss"])[metric])


def trial_folder(sweeps_root: Path, study: str, number: int) -> Path:
    return sweeps_root / study / f"trial-{number}"


def run_trial(
    trial: optuna.Trial,
    params: Params,
    prepared_dir: Path,
    sweeps_root: Path,
    project_root: Path,
    parent_id: str,
) -> tuple[TrialState, float | None, str]:
    """Train the trial; (state, value, note). A setting the schema refuses or a training that
    diverged fails the trial, not the sweep; any other error propagates (after the caller fails
    the trial)."""
    sweep = params.sweep
    study = trial.study.study_name
    values = suggest(trial, params)
    try:
        chosen = with_values(params, values, source=f"sweep trial {trial.number}")
    except ParamsError as exc:
        return TrialState.FAIL, None, str(exc)
    folder = trial_folder(sweeps_root, study, trial.number)
    pruning = PruneOnMetric(trial, sweep.metric, sweep.pruning)
    try:
        result = train(
            chosen,
            sweep.architecture,
            prepared_dir,
            folder / "model",
            work_root=folder / "work",
            project_root=project_root,
            tags={STUDY_TAG: study, TRIAL_TAG: str(trial.number)},
            parent_run_id=parent_id,
            progress_bar=False,
            callbacks=[pruning],
        )
    except ParamsError as exc:  # e.g. diverged: the trial failed, the sweep goes on
        return TrialState.FAIL, None, str(exc)
    finally:
        shutil.rmtree(folder / "work", ignore_errors=True)
    trial.set_user_attr(RUN_ATTR, result.run_id)
    value = objective_value(result.info, sweep.metric)
    if pruning.pruned_at is not None:
        return TrialState.PRUNED, value, f"pruned after epoch {pruning.pruned_at + 1}"
    return TrialState.COMPLETE, value, ""
