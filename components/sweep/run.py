"""The sweep loop: open (or continue) the study and its MLflow parent run, run trials until the
study holds ``sweep.n_trials`` finished or pruned ones, then tag the best and write ``best.yaml``.

Several processes (on one machine or several, sharing the storage) may run it on the same study:
each trial takes its number from the storage, and a trial runs only while fewer than ``n_trials``
trials before it are finished, pruned or running (:func:`components.sweep.study.may_run`), so
between them they stop at exactly ``n_trials``. A trial whose process was killed is marked FAIL
by the next process that looks, and never trained again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.samplers import TPESampler
from optuna.study import StudyDirection
from optuna.trial import TrialState

from components.atomic import dumps_json
from components.config import Params
from components.data.prepared import data_version
from components.errors import ParamsError
from components.hashing import sha256_bytes
from components.naming import experiment_name
from components.sweep import runs
from components.sweep.best import BEST_FILE, write_best
from components.sweep.space import MAXIMISE, with_values
from components.sweep.study import (
    COUNTED,
    claim,
    counted,
    fail_dead_trials,
    heartbeat,
    may_run,
    open_storage,
    quiet_optuna,
    storage_url,
    study_name,
)
from components.sweep.trial import Outcome, decoded, run_trial, starting_point
from components.tracking import Tracker

SETTINGS_ATTR = "sweep.settings"  # the key of what the study's trials were trained with


@dataclass
class SweepResult:
    study: str
    storage: str
    parent_run_id: str
    n_trials: int
    counted: int  # finished + pruned trials in the study now
    outcomes: list[Outcome] = field(default_factory=list)  # the trials this process ran
    leaders: list[dict[str, Any]] = field(default_factory=list)  # best finished trials, best first
    best_file: Path | None = None
    best_values: dict[str, Any] = field(default_factory=dict)


def settings_key(params: Params, version: str) -> str:
    """What a study's trials must share to be compared: the data, the architecture, the metric and
    every setting outside the searched keys (n_trials, timeout, seed, storage may change)."""
    raw = params.model_dump(mode="json", exclude={"sweep": {"n_trials", "timeout", "seed", "storage"}})
    for key in params.sweep.space:
        *sections, leaf = key.split(".")
        node = raw
        for part in sections:
            node = node[part]
        node.pop(leaf, None)
    kept = {k: raw[k] for k in ("data", "preprocess", "train", "sweep")}
    kept["model"] = raw["models"][params.sweep.architecture]
    return sha256_bytes(dumps_json({"data": version, "settings": kept}).encode())


def trial_params(params: Params) -> Params:
    """A trial trains in one process on one device; more parallelism is more sweep processes."""
    if params.train.num_nodes > 1 or params.train.devices not in ("auto", 1):
        raise ParamsError(
            "train.devices / train.num_nodes: a sweep trial trains in one process on one device; run "
            "several sweep processes on the same study instead (docs/sweeps.md)"
        )
    return (
        with_values(params, {"train.devices": 1}, source="sweep")
        if params.train.devices == "auto"
        else params
    )


def open_study(params: Params, url: str, version: str) -> tuple[optuna.Study, bool]:
    """Create the study, or load it (``load_if_exists``); refuse one started with other settings."""
    storage = open_storage(url)
    name, key = study_name(params), settings_key(params, version)
    direction = StudyDirection.MAXIMIZE if MAXIMISE[params.sweep.metric] else StudyDirection.MINIMIZE
    sampler, pruner = TPESampler(seed=params.sweep.seed), _pruner(params)
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=direction, sampler=sampler, pruner=pruner
        )
        study.set_user_attr(SETTINGS_ATTR, key)
        start = starting_point(params)
        if start is not None:  # the first trial: params.yaml's own values, the point to beat
            study.enqueue_trial(start)
        return study, True
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if study.user_attrs.get(SETTINGS_ATTR, key) != key:
        raise ParamsError(
            f"sweep.study_name: the study {name!r} in {url} was run with other settings (data, "
            "architecture, metric, space keys or settings outside the space); set sweep.study_name "
            "to start a new study, or restore those settings to continue it"
        )
    return study, False


def _pruner(params: Params) -> BasePruner:
    # Five finished trials before any is pruned, and none before its fifth epoch ended: earlier, a
    # slow starter (a low learning rate, a large batch) loses to a fast one that ends worse.
    return MedianPruner(n_startup_trials=5, n_warmup_steps=4) if params.sweep.pruning else NopPruner()


def _sampler(params: Params, study: optuna.Study) -> TPESampler:
    """Seeded by ``sweep.seed`` and the trials so far: a rerun does not repeat its first draws, and
    one process on a fresh study draws the same trials every time."""
    seed = params.sweep.seed + len(study.get_trials(deepcopy=False))
    return TPESampler(seed=seed % 2**32, constant_liar=True)


TrialHook = Callable[[Outcome, int, int], None]  # (outcome, counted so far, n_trials)


def run_sweep(
    params: Params,
    project_root: Path | str = ".",
    prepared_dir: Path | str | None = None,
    sweeps_root: Path | str | None = None,
    on_trial: TrialHook | None = None,
) -> SweepResult:
    """Run (or continue) the sweep ``params.sweep`` describes; see the module's docstring."""
    with quiet_optuna():
        return _run_sweep(params, Path(project_root), prepared_dir, sweeps_root, on_trial)


def _run_sweep(
    params: Params,
    project_root: Path,
    prepared_dir: Path | str | None,
    sweeps_root: Path | str | None,
    on_trial: TrialHook | None,
) -> SweepResult:
    root = Path(project_root).resolve()
    prepared = Path(prepared_dir) if prepared_dir else root / "data" / "prepared"
    folder = Path(sweeps_root) if sweeps_root else root / "sweeps"
    params = trial_params(params)
    url = storage_url(params, root)
    study, created = open_study(params, url, data_version(prepared))
    tracker = Tracker.open(experiment_name(params), root)
    parent = runs.parent_run(tracker, study, created, params, url)
    result = SweepResult(study.study_name, url, parent, params.sweep.n_trials, counted(study))
    interrupted = True
    try:
        _loop(params, study, prepared, folder, root, tracker, result, on_trial)
        interrupted = False
    finally:
        result.counted = counted(study)
        runs.finish(tracker, study, parent, interrupted)
    _conclude(params, study, folder, result)
    return result


def _loop(
    params: Params,
    study: optuna.Study,
    prepared: Path,
    folder: Path,
    root: Path,
    tracker: Tracker,
    result: SweepResult,
    on_trial: TrialHook | None,
) -> None:
    """Trials until the study holds n_trials, ``sweep.timeout`` passed, or n_trials trials in a row
    failed (a setting that fails every trial is an error, not a search)."""
    sweep, started, failures = params.sweep, time.monotonic(), 0
    while sweep.timeout is None or time.monotonic() - started < sweep.timeout:
        fail_dead_trials(study)
        if counted(study) >= sweep.n_trials:
            return
        study.sampler = _sampler(params, study)
        trial = study.ask()
        claim(trial)
        if not may_run(study, trial, sweep.n_trials):  # other processes hold the last places
            trial.set_user_attr("sweep.failed", "not run: the study was full")
            study.tell(trial, state=TrialState.FAIL)
            return
        outcome = _one_trial(params, study, trial, prepared, folder, root, tracker, result.parent_run_id)
        result.outcomes.append(outcome)
        failures = failures + 1 if outcome.state == TrialState.FAIL else 0
        if on_trial is not None:
            on_trial(outcome, counted(study), sweep.n_trials)
        if failures >= sweep.n_trials:
            raise ParamsError(f"sweep: {failures} trials in a row failed; the last: {outcome.note}")


def _one_trial(
    params: Params,
    study: optuna.Study,
    trial: optuna.Trial,
    prepared: Path,
    folder: Path,
    root: Path,
    tracker: Tracker,
    parent: str,
) -> Outcome:
    """Run ``trial`` with a heartbeat, tell Optuna how it ended and record it on its MLflow run.
    Interrupted (Ctrl-C, SIGTERM) or broken by an unexpected error, it is told FAIL first."""
    begun = time.monotonic()
    try:
        with heartbeat(study, trial):
            state, value, note = run_trial(trial, params, prepared, folder, root, parent)
    except BaseException as exc:
        trial.set_user_attr("sweep.failed", f"{type(exc).__name__}: {exc}"[:2000])
        study.tell(trial, state=TrialState.FAIL)
        number = trial.number
        runs.record_trial(
            tracker,
            parent,
            runs.trial_run_id(tracker, parent, study.study_name, number),
            number,
            TrialState.FAIL,
            None,
        )
        raise
    if note:
        trial.set_user_attr("sweep.note", note[:2000])
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    run_id = trial.user_attrs.get(runs.RUN_ATTR) or runs.trial_run_id(
        tracker, parent, study.study_name, trial.number
    )
    runs.record_trial(tracker, parent, run_id, trial.number, state, value)
    values = decoded(params, trial.params)
    return Outcome(trial.number, state, value, values, time.monotonic() - begun, run_id, note)


def _conclude(params: Params, study: optuna.Study, folder: Path, result: SweepResult) -> None:
    """The leaders (best finished trials) and, once one finished, ``best.yaml``."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return
    best = study.best_trial
    ranked = sorted(done, key=lambda t: t.value or 0.0, reverse=MAXIMISE[params.sweep.metric])
    result.leaders = [
        {"trial": t.number, "value": t.value, "params": decoded(params, t.params)} for t in ranked[:5]
    ]
    result.best_values = decoded(params, best.params)
    header = [
        f"best trial {best.number} of study {study.study_name} ({params.sweep.architecture}): "
        f"{params.sweep.metric} {best.value:.6g}",
        f"{len(study.get_trials(deepcopy=False, states=COUNTED))} trials counted; train with these values "
        "through the pipeline (docs/sweeps.md)",
    ]
    result.best_file = write_best(folder / study.study_name / BEST_FILE, result.best_values, header)
