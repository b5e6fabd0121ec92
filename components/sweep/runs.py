"""MLflow records of a sweep: one parent run per study, the trials' runs (opened by ``train``)
under it, and at the end the best trial tagged and Optuna's plots on the parent.

The parent is found again by the study: its run id is a user attribute of the study, set by the
process that created the study (others wait for it), so a rerun or a second process reopens it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

if TYPE_CHECKING:
    from matplotlib.axes import Axes

from components.config import Params
from components.sweep.study import COUNTED
from components.tracking import PARENT_TAG, Tracker

PARENT_ATTR = "mlflow.parent_run_id"
RUN_ATTR = "mlflow.run_id"
STUDY_TAG = "sweep.study"
TRIAL_TAG = "sweep.trial"
STATE_TAG = "sweep.state"
BEST_TAG = "sweep.best"
VALUE_METRIC = "sweep.value"
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
_WAIT_FOR_PARENT_S = 60.0


def sweep_params(params: Params, study: str, storage: str) -> dict[str, str]:
    """The parent run's params: the study, its settings and the search space (a key per space key)."""
    sweep = params.sweep
    logged = {
        "sweep.study_name": study,
        "sweep.storage": storage.split("@")[-1],  # no password from a database URL
        **{
            f"sweep.{k}": str(v)
            for k, v in sweep.model_dump(exclude={"space", "study_name", "storage"}).items()
        },
    }
    for key, spec in sweep.space.items():
        logged[f"space.{key}"] = json.dumps(spec.model_dump(), separators=(",", ":"))[:6000]
    return logged


def parent_run(tracker: Tracker, study: optuna.Study, created: bool, params: Params, storage: str) -> str:
    """The study's parent run: created (and recorded on the study) by the study's creator, else
    read from the study, reopened RUNNING and claimed by this process."""
    if created:
        run_id = tracker.start_parent(f"sweep-{study.study_name}", {STUDY_TAG: study.study_name})
        study.set_user_attr(PARENT_ATTR, run_id)
        _log_params(tracker, run_id, sweep_params(params, study.study_name, storage))
        return run_id
    deadline = time.monotonic() + _WAIT_FOR_PARENT_S
    while PARENT_ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)  # the creating process records it right after creating the study
    found = str(study.user_attrs.get(PARENT_ATTR) or "")
    if not found or not tracker.run_exists(found):
        return parent_run(tracker, study, True, params, storage)
    tracker.claim(found)
    tracker.client.update_run(found, status="RUNNING")
    return found


def set_tags(tracker: Tracker, run_id: str, tags: dict[str, str]) -> None:
    """Set ``tags`` on a run other sweep processes may tag at the same moment (the best trial's, the
    parent): MLflow's ``set_tag`` fails when two processes add the same new key at once (UNIQUE
    constraint), its ``log_batch`` retries that and then updates the row the other one added."""
    from mlflow.entities import RunTag

    tracker.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def _log_params(tracker: Tracker, run_id: str, logged: dict[str, str]) -> None:
    from mlflow.entities import Param

    tracker.client.log_batch(run_id, params=[Param(k, v) for k, v in logged.items()])


def trial_run_id(tracker: Tracker, parent_id: str, study: str, number: int) -> str | None:
    """The run ``train`` opened for trial ``number`` (found by its tags, also when training raised)."""
    found = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=(
            f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{STUDY_TAG}` = '{study}' "
            f"and tags.`{TRIAL_TAG}` = '{number}'"
        ),
        max_results=1,
    )
    return found[0].info.run_id if found else None


def record_trial(
    tracker: Tracker, parent_id: str, run_id: str | None, number: int, state: TrialState, value: float | None
) -> None:
    """The trial's state and value on its run (named ``trial-<n>``); the parent RUNNING again, as
    ending a child settles its parent's status."""
    if run_id is not None:
        tracker.client.update_run(run_id, name=f"trial-{number}")
        set_tags(tracker, run_id, {STATE_TAG: STATES.get(state, state.name.lower())})
        if value is not None:
            tracker.client.log_metric(run_id, VALUE_METRIC, value)
    tracker.client.update_run(parent_id, status="RUNNING")


def finish(tracker: Tracker, study: optuna.Study, parent_id: str, interrupted: bool) -> None:
    """Tag the best trial's run (``sweep.best=true``, the others false), put the plots on the parent
    and end it: FINISHED, or KILLED when the sweep was interrupted (a rerun continues it)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if done else None
    for trial in done:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            is_best = best is not None and trial.number == best.number
            set_tags(tracker, str(run_id), {BEST_TAG: str(is_best).lower()})
    tags = {"sweep.trials_counted": str(len(study.get_trials(deepcopy=False, states=COUNTED)))}
    if best is not None:
        tags |= {"sweep.best_trial": str(best.number), "sweep.best_value": f"{best.value:.6g}"}
        tracker.client.log_metric(parent_id, "sweep.best_value", float(best.value or 0.0))
    log_plots(tracker, study, parent_id)
    tracker.end_parent(parent_id, succeeded=not interrupted, tags=tags, interrupted=interrupted)


def log_plots(tracker: Tracker, study: optuna.Study, parent_id: str) -> list[str]:
    """Optimisation history and (with two or more finished trials) parameter importances as PNGs on
    the parent (matplotlib: plotly is not a dependency); returns the notes of what was skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from optuna.visualization import matplotlib as plots

    notes = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with tempfile.TemporaryDirectory() as folder:
        figures: dict[str, Callable[[optuna.Study], Axes]] = {
            "optimization_history.png": plots.plot_optimization_history
        }
        if len(complete) >= 2:
            figures["param_importances.png"] = plots.plot_param_importances
        else:
            notes.append(
                f"parameter importances need 2 finished trials ({len(complete)} so far): not plotted"
            )
        for name, plot in figures.items():
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of a parameter that never varied
                notes.append(f"{name}: not plotted ({exc})")
                continue
            figure = axes.get_figure(root=True)
            assert isinstance(figure, Figure)
            figure.savefig(Path(folder) / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
        tracker.client.log_artifacts(parent_id, folder, "sweep")
    if notes:
        set_tags(tracker, parent_id, {"sweep.plot_notes": "; ".join(notes)})
    return notes
