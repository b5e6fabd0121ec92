"""Human-readable summary of the trained and evaluated architectures (the end of ``make run``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from components.evaluation.evaluate import METRICS
from components.training.artifacts import TRAIN_INFO


def results_table(
    architectures: Sequence[str],
    models_root: Path | str,
    reports_root: Path | str,
    registration: Path | str | None = None,
) -> Table:
    """One row per architecture: test accuracy, macro-F1, size, training and inference speed, and
    its registered version (``champion`` marked) when ``registration`` (registration.json) exists."""
    versions: dict[str, str] = {}
    if registration is not None and Path(registration).is_file():
        report = json.loads(Path(registration).read_text(encoding="utf-8"))
        champion = (report.get("champion") or {}).get("version")
        for decision in report.get("decisions", []):
            mark = " champion" if str(decision["version"]) == str(champion) else ""
            versions[decision["architecture"]] = f"v{decision['version']}{mark}"
    table = Table(title="Test-split results")
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
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        info = json.loads(info_file.read_text(encoding="utf-8"))
        table.add_row(
            arch,
            f"{metrics['accuracy']:.4f}",
            f"{metrics['f1_macro']:.4f}",
            f"{info['parameters']:,}",
            str(info["epochs"]),
            f"{info['fit_seconds']:.1f} s",
            f"{metrics['images_per_second']:,.0f}",
            versions.get(arch, ""),
        )
    return table
