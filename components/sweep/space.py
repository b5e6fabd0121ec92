"""The ``sweep.space`` of params.yaml: which keys may be searched and which values they accept.

A key's values are checked by the schema itself: the whole Params is built with the value set
(``low``, ``high`` and every choice), so the key's own bounds and rules apply, and the error names
the key. Nothing here imports Optuna (params load on every stage).
"""

from __future__ import annotations

import json
from typing import Any

from components.config import (
    Params,
    SpaceChoices,
    SpaceRange,
    SweepMetric,
    apply_overrides,
    validate_params,
)
from components.errors import ParamsError

# Direction of each validation metric.
MAXIMISE: dict[SweepMetric, bool] = {"val_acc": True, "val_f1_macro": True, "val_loss": False}


def current_value(params: Params, key: str) -> tuple[bool, Any]:
    """(found, value) of the dotted ``key`` in ``params``; not found when a part is not a field."""
    node: Any = params
    for part in key.split("."):
        fields = getattr(type(node), "model_fields", None)
        if fields is None or part not in fields:
            return False, None
        node = getattr(node, part)
    return not hasattr(type(node), "model_fields"), node  # a whole section is not a key


def with_values(params: Params, values: dict[str, Any], source: str) -> Params:
    """``params`` with dotted-key ``values`` set, validated by the schema (sweep space unchecked)."""
    raw = apply_overrides(params.model_dump(mode="json"), values)
    return validate_params(raw, source=source, check_sweep=False)


def _value_problem(params: Params, key: str, value: Any) -> str | None:
    try:
        with_values(params, {key: value}, source="sweep")
    except ParamsError as exc:
        lines = str(exc).splitlines()[1:]  # the schema's lines, without the "invalid settings" header
        reasons = [line.strip() for line in lines if line.strip().startswith(key)] or [
            line.strip() for line in lines
        ]
        return "; ".join(reasons)
    return None


def _range_problems(params: Params, key: str, value: Any, spec: SpaceRange) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        held = json.dumps(value)
        return [f"sweep.space.{key}: a range needs a numeric key (it holds {held}); give choices"]
    if isinstance(value, int) and not (isinstance(spec.low, int) and isinstance(spec.high, int)):
        return [f"sweep.space.{key}: an integer key needs integer low and high (got {spec.low}, {spec.high})"]
    problems = []
    for end, bound in (("low", spec.low), ("high", spec.high)):
        checked = float(bound) if isinstance(value, float) else bound
        problem = _value_problem(params, key, checked)
        if problem:
            problems.append(f"sweep.space.{key}: {end} {bound} is outside the key's own bounds ({problem})")
    return problems


def _choice_problems(params: Params, key: str, spec: SpaceChoices) -> list[str]:
    encoded = [json.dumps(choice) for choice in spec.choices]
    if len(set(encoded)) < len(encoded):
        return [f"sweep.space.{key}: choices repeat a value ({', '.join(encoded)})"]
    problems = []
    for choice in spec.choices:
        problem = _value_problem(params, key, choice)
        if problem:
            problems.append(f"sweep.space.{key}: choice {json.dumps(choice)} is refused ({problem})")
    return problems


def space_problems(params: Params) -> list[str]:
    """One line per refused ``sweep.space`` key, naming it: unknown, outside ``train.*`` and
    ``models.<sweep.architecture>.*``, a range on a non-numeric key or beyond the key's bounds, or a
    choice the key refuses."""
    arch = params.sweep.architecture
    allowed = ("train.", f"models.{arch}.")
    problems = []
    for key, spec in params.sweep.space.items():
        if key == "train.architectures" or not key.startswith(allowed):
            problems.append(
                f"sweep.space.{key}: only train.* (not train.architectures) and models.{arch}.* keys "
                f"can be searched (sweep.architecture: {arch})"
            )
            continue
        found, value = current_value(params, key)
        if not found:
            problems.append(f"sweep.space.{key}: unknown key (see docs/params.md)")
        elif isinstance(spec, SpaceRange):
            problems.extend(_range_problems(params, key, value, spec))
        else:
            problems.extend(_choice_problems(params, key, spec))
    return problems
