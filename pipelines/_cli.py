"""What every stage CLI shares: offline environment defaults and user-facing error handling."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from rich.console import Console
from rich.markup import escape

from components.config import ALL_ARCHITECTURES, Architecture, parse_yaml
from components.errors import (
    EXIT_BAD_INPUT,
    EXIT_PREEMPTED,
    EXIT_TRANSIENT,
    ParamsError,
    PipelineError,
    Preempted,
    TransientError,
    record_exit_code,
)

T = TypeVar("T")

# Telemetry off unless the user explicitly turned it on: nothing leaves the machine by default.
OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

console = Console(stderr=True)


def set_offline_defaults() -> None:
    """Set the telemetry opt-outs in this process's environment (user values win)."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def run_stage(stage: str, body: Callable[[], T]) -> T:
    """Run ``body``; a :class:`PipelineError` becomes a one-paragraph message and an exit code:
    143 when stopped by SIGTERM/Ctrl-C with its checkpoint kept (run again to resume), 75 when a
    service did not answer (worth a retry), 2 for bad input.

    With ``PIPELINE_EXIT_CODE_DIR`` set (by :mod:`components.training.launch`, for ranks under
    ``torchrun``, which exits 1 whatever its workers exit with) the code is also recorded there.
    """
    set_offline_defaults()
    try:
        return body()
    except PipelineError as exc:
        what = "stopped" if isinstance(exc, Preempted) else "failed"
        console.print(
            f"[bold red]{stage} {what}:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        code = (
            EXIT_PREEMPTED
            if isinstance(exc, Preempted)
            else EXIT_TRANSIENT
            if isinstance(exc, TransientError)
            else EXIT_BAD_INPUT
        )
        record_exit_code(code)
        sys.exit(code)


def architecture(name: str) -> Architecture:
    """``--arch`` checked against the known architectures."""
    if name not in ALL_ARCHITECTURES:
        raise ParamsError(f"--arch {name!r}: unknown architecture (known: {', '.join(ALL_ARCHITECTURES)})")
    return name


def run_tags(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` from ``--tag`` options as a mapping."""
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParamsError(f"--tag {pair!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


def key_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.max_epochs=3", ...]`` from ``--set`` options: dotted key to its YAML value.

    A pair without ``=`` is refused rather than read as ``key: null`` (which a nullable key would
    accept silently); the values are then checked by the params schema like any other setting.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {pair!r}: expected KEY=VALUE (a YAML value; KEY=null for null)")
        try:
            overrides[key.strip()] = parse_yaml(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ParamsError(f"--set {pair!r}: the value is not valid YAML ({problem})") from None
    return overrides
