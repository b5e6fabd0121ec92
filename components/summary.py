"""What the pipeline produced, printed: the last step of ``make run`` and ``pipelines.summary``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from components.config import load_params
from components.data.summary import prepared_table
from components.evaluation.summary import champion_line, results_table
from components.registry.decisions import REPORT
from components.tracking import tracking_uri


def print_summary(
    params: Path,
    root: Path,
    prepared: Path | None = None,
    models: Path | None = None,
    reports: Path | None = None,
    architectures: Sequence[str] | None = None,
) -> None:
    """The prepared-data table, the results table (champion marked) and how to open the MLflow UI."""
    settings = load_params(params)
    reports = reports or root / "reports"
    # Logs and CI are not terminals: rich would fit the table into 80 columns and cut names.
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(prepared_table(prepared or root / "data" / "prepared"))
    chosen = list(architectures or settings.train.architectures)
    console.print(results_table(chosen, models or root / "models", reports, reports / REPORT))
    champion = champion_line(reports / REPORT)
    if champion:
        console.print(champion, highlight=False)
    uri = tracking_uri(root)
    hint = f"uv run mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri
    console.print(f"Browse the runs: {hint}", highlight=False, soft_wrap=True)
