"""Human-readable summary of the trained and evaluated architectures (the end of ``make run``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from components.errors import DataValidationError
from components.evaluation.evaluate import METRICS
from components.training.artifacts import TRAIN_INFO, read_train_info

# What a hand-edited or truncated registration.json raises while it is read.
_UNREADABLE = (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError)


def _result_cells(metrics_file: Path, info_file: Path) -> list[str]:
    """Accuracy, macro-F1, parameters, epochs, fit time and inference speed, formatted."""
    info = read_train_info(info_file)
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        figures = [float(metrics[key]) for key in ("accuracy", "f1_macro", "images_per_second")]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataValidationError(
            metrics_file, "must hold accuracy, f1_macro and images_per_second", repr(exc)
        ) from None
    accuracy, f1_macro, images_per_second = figures
    return [
        f"{accuracy:.4f}",
        f"{f1_macro:.4f}",
        f"{info['parameters']:,}",
        str(info["epochs"]),
        f"{info['fit_seconds']:.1f} s",
        f"{images_per_second:,.0f}",
    ]


def read_registration(path: Path | str) -> dict[str, Any] | None:
    """``registration.json`` as written by the register stage, or None where there is none.

    Raises one of ``_UNREADABLE``'s errors on a file that is not valid JSON or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(report, dict):
        raise TypeError(f"a JSON object was expected, not {type(report).__name__}")
    return report


def champion_line(registration: Path | str) -> str | None:
    """Which version holds ``champion`` (it may be one none of the current models produced); None
    when nothing is registered or the file is unreadable (the results table's caption says so)."""
    try:
        report = read_registration(registration) or {}
        champion = report.get("champion")
        if not champion:
            return None
        name, version = report.get("model_name") or "model", champion["version"]
        architecture = champion.get("architecture")
    except _UNREADABLE:
        return None
    return f"Champion: {name} v{version}" + (f" ({architecture})" if architecture else "")


def results_table(
    architectures: Sequence[str],
    models_root: Path | str,
    reports_root: Path | str,
    registration: Path | str | None = None,
) -> Table:
    """One row per architecture: test accuracy, macro-F1, size, training and inference speed, and
    its registered version (``champion`` marked) when ``registration`` (registration.json) exists."""
    versions: dict[str, str] = {}
    caption = None
    if registration is not None:
        try:
            report = read_registration(registration) or {}
            champion = (report.get("champion") or {}).get("version")
            for decision in report.get("decisions") or []:
                mark = " champion" if str(decision["version"]) == str(champion) else ""
                versions[decision["architecture"]] = f"v{decision['version']}{mark}"
        except _UNREADABLE as exc:
            versions, caption = {}, f"{registration}: unreadable ({exc!r}); versions not shown"
    table = Table(title="Test-split results", caption=caption)
    for name, justify in [
        ("architecture", "left"),
        ("accuracy", "right"),
        ("macro-F1", "right"),
        ("parameters", "right"),
        ("epochs", "right"),
        ("fit time", "right"),
        ("inference images/s", "right"),
        ("registered", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for arch in architectures:
        metrics_file = Path(reports_root) / arch / METRICS
        info_file = Path(models_root) / arch / TRAIN_INFO
        if not metrics_file.is_file() or not info_file.is_file():
            table.add_row(arch, "not evaluated yet", "", "", "", "", "", "")
            continue
        try:
            cells = _result_cells(metrics_file, info_file)
        except DataValidationError as exc:  # one bad file spoils its row, not the whole table
            table.add_row(arch, f"unreadable: {exc}", "", "", "", "", "", "")
            continue
        table.add_row(arch, *cells, versions.get(arch, ""))
    return table
