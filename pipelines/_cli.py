"""What every stage CLI shares: offline environment defaults and user-facing error handling."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

from components.config import ALL_ARCHITECTURES, Architecture
from components.errors import ParamsError, PipelineError

T = TypeVar("T")

# Telemetry off unless the user explicitly turned it on: nothing leaves the machine by default.
OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

console = Console(stderr=True)


def set_offline_defaults() -> None:
    """Set the telemetry opt-outs in this process's environment (user values win)."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def run_stage(stage: str, body: Callable[[], T]) -> T:
    """Run ``body``; a :class:`PipelineError` becomes a one-paragraph message and exit code 2."""
    set_offline_defaults()
    try:
        return body()
    except PipelineError as exc:
        console.print(
            f"[bold red]{stage} failed:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)


def architecture(name: str) -> Architecture:
    """``--arch`` checked against the known architectures."""
    if name not in ALL_ARCHITECTURES:
        raise ParamsError(f"--arch {name!r}: unknown architecture (known: {', '.join(ALL_ARCHITECTURES)})")
    return name
