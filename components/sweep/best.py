"""The winner of a sweep, fed back to the normal pipeline: ``sweeps/<study>/best.yaml`` (dotted
keys), the ``dvc exp run -S`` and flow commands that train with it, and ``--apply``, which writes
the values into params.yaml in place, keeping its comments and layout.

Nothing from a sweep is registered: the pipeline trains the winner again, evaluates it on the test
split and registers it behind the champion gate.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from components.atomic import atomic_write_text
from components.config import parse_yaml, validate_params
from components.errors import ParamsError
from components.sweep.space import current_value

BEST_FILE = "best.yaml"


def yaml_value(value: Any) -> str:
    """``value`` as one line of YAML flow style (``0.001``, ``[64, 32]``, ``mean``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def write_best(path: Path, values: dict[str, Any], header: list[str]) -> Path:
    """``best.yaml``: one dotted key per line, with ``header`` as comment lines; atomic."""
    lines = [f"# {line}" for line in header]
    lines += [f"{key}: {yaml_value(value)}" for key, value in values.items()]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_best(path: Path) -> dict[str, Any]:
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{path}: expected a mapping of dotted keys to values")
    return raw


def commands(values: dict[str, Any], architecture: str) -> list[str]:
    """The commands that train the winner through the normal pipeline (DVC, then the flow)."""
    pairs = [f"{key}={yaml_value(value)}" for key, value in values.items()]
    dvc = " ".join(["uv run dvc exp run", *(f"-S {shlex.quote(pair)}" for pair in pairs)])
    flow = " ".join(
        [
            "uv run python -m flows.pipeline",
            f"--arch {architecture}",
            *(f"--set {shlex.quote(p)}" for p in pairs),
        ]
    )
    return [dvc, flow]


_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<space> *)(?P<rest>.*)$")


def _value_and_comment(rest: str) -> tuple[str, str]:
    """Split a line's text after ``key:`` into its value and its trailing comment (``  # ...``)."""
    match = re.search(r"\s+#", rest)
    return (rest[: match.start()], rest[match.start() :]) if match else (rest, "")


def _key_line(lines: list[str], dotted: str) -> int:
    """Index of the line holding ``dotted`` in a block-style YAML text (nested by indentation)."""
    parts, start, indent = dotted.split("."), 0, -1
    for depth, part in enumerate(parts):
        found = None
        for i in range(start, len(lines)):
            match = _LINE.match(lines[i])
            if not match or lines[i].lstrip().startswith("#"):
                continue
            width = len(match["indent"])
            if width <= indent:  # left the enclosing section
                break
            if match["key"] == part and (depth == 0 or width > indent):
                found, indent = i, width
                break
        if found is None:
            raise ParamsError(f"{dotted}: not found in the params file as a block key; set it there by hand")
        start = found + 1
    assert found is not None
    return found


def applied_text(text: str, values: dict[str, Any]) -> str:
    """``text`` (params.yaml) with each dotted key's value replaced on its own line; comments and
    the column they start at are kept."""
    lines = text.splitlines()
    for key, value in values.items():
        i = _key_line(lines, key)
        match = _LINE.match(lines[i])
        assert match is not None
        old, comment = _value_and_comment(match["rest"])
        new = yaml_value(value)
        padded = new.ljust(len(old)) if comment else new
        lines[i] = f"{match['indent']}{match['key']}:{match['space'] or ' '}{padded}{comment}"
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def apply_best(params_file: Path, values: dict[str, Any]) -> None:
    """Write ``values`` into ``params_file`` in place (atomically), once the result validates and
    holds exactly these values; nothing is written otherwise."""
    text = params_file.read_text(encoding="utf-8")
    new_text = applied_text(text, values)
    params = validate_params(parse_yaml(new_text) or {}, source=f"{params_file} (with the sweep's values)")
    for key, value in values.items():
        if current_value(params, key) != (True, value):
            raise ParamsError(f"{params_file}: {key} did not take the value {value!r}; set it by hand")
    atomic_write_text(params_file, new_text)
