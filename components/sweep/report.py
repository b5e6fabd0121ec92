"""What a sweep prints: one line per trial while it runs, and at the end a table of the best
trials with the commands that train the winner through the pipeline."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from components.sweep.best import commands, yaml_value
from components.sweep.run import SweepResult
from components.sweep.trial import Outcome


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in values.items())


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else yaml_value(value)


def trial_line(outcome: Outcome, counted: int, n_trials: int, metric: str) -> str:
    """``trial 3 complete  val_acc 0.9741  (learning_rate=0.0012, batch_size=64)  14.2 s  [4/25]``."""
    value = f"{metric} {outcome.value:.4f}" if outcome.value is not None else outcome.note[:120]
    state = outcome.state.name.lower()
    return (
        f"trial {outcome.number} {state:<8} {value}  ({_values(outcome.values)})  "
        f"{outcome.seconds:.1f} s  [{counted}/{n_trials}]"
    )


def leaders_table(result: SweepResult, metric: str) -> Table:
    """The best finished trials, best first."""
    table = Table(
        title=f"Sweep {result.study}: best trials",
        caption=f"{result.counted} of {result.n_trials} trials finished or pruned; MLflow parent run "
        f"{result.parent_run_id}",
    )
    table.add_column("trial", justify="right")
    table.add_column(metric, justify="right")
    keys = list(result.leaders[0]["params"]) if result.leaders else []
    for key in keys:
        table.add_column(key)
    for leader in result.leaders:
        cells = [_short(leader["params"].get(key)) for key in keys]
        table.add_row(str(leader["trial"]), f"{leader['value']:.4f}", *cells)
    return table


def next_steps(result: SweepResult, architecture: str) -> list[str]:
    """Where best.yaml is and the commands that train the winner (or why there is none)."""
    if result.best_file is None:
        return ["no trial finished: nothing to apply"]
    lines = [
        f"best values: {result.best_file}",
        "train them through the pipeline (test split, champion gate):",
    ]
    lines += [f"  {command}" for command in commands(result.best_values, architecture)]
    if any(key.startswith("train.") for key in result.best_values):
        lines.append("  (train.* keys apply to every architecture in train.architectures)")
    lines.append("or write them into params.yaml: add --apply")
    return lines
