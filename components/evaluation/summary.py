"""Human-readable summary of the trained and evaluated architectures (the end of ``make run``).

Each figure is shown only while it still describes the model in ``models/<arch>/``: retraining one
architecture (``train@<arch>`` alone) leaves its older report and registration decision behind, and
the table would otherwise put the new model's size beside the old model's accuracy and version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from components.errors import DataValidationError
from components.evaluation.evaluate import METRICS, REPORT
from components.hashing import sha256_file
from components.training.artifacts import TRAIN_INFO, WEIGHTS, read_train_info

COMPRESSION_REPORT = "compression.json"  # written by compress@<arch> beside the evaluation's reports
# What a hand-edited or truncated registration.json raises while it is read.
_UNREADABLE = (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError)
_NOT_RECORDED = object()  # a report without a readable fingerprint: never equal to the model's


def stale(stage: str) -> str:
    """The cell shown where a figure describes an older model than the current one."""
    return f"stale: re-run {stage}"


def _train_cells(info: dict[str, Any]) -> list[str]:
    """Parameters, epochs and fit time of the current model, formatted."""
    return [f"{info['parameters']:,}", str(info["epochs"]), f"{info['fit_seconds']:.1f} s"]


def privacy_cell(info: dict[str, Any]) -> str:
    """The ε a DP model spent (δ beside it), or ``—`` for a model trained without privacy."""
    privacy = info.get("privacy")
    if not privacy:
        return "—"
    return f"{privacy['epsilon']:.2f} (δ {privacy['delta']:.0e})"


def _metric_cells(metrics_file: Path) -> tuple[str, str, str]:
    """Accuracy, macro-F1 and inference speed, formatted. The speed is ``samples_per_second``, or
    ``images_per_second`` in a report written before that key existed."""
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        speed_key = "samples_per_second" if "samples_per_second" in metrics else "images_per_second"
        figures = [float(metrics[key]) for key in ("accuracy", "f1_macro", speed_key)]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataValidationError(
            metrics_file, "must hold accuracy, f1_macro and samples_per_second", repr(exc)
        ) from None
    accuracy, f1_macro, samples_per_second = figures
    return f"{accuracy:.4f}", f"{f1_macro:.4f}", f"{samples_per_second:,.0f}"


def size_text(size: float) -> str:
    """Bytes as B, KB or MB (powers of 1000)."""
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.0f} {unit}" if size >= 10 * scale else f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


def compression_cell(report_file: Path, info: dict[str, Any], arch: str) -> str:
    """The compressed model's test accuracy and size from ``reports/<arch>/compression.json``:
    ``0.9852, 54 KB (3.8x)``, marked ``✗`` when rejected; ``none`` when the method made none."""
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "—"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"unreadable: {exc!r}"
    if report.get("model_fingerprint", _NOT_RECORDED) != info.get("fingerprint"):
        return stale(f"compress@{arch}")
    before, after = report.get("before"), report.get("after")
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return str(report.get("method") or "—")
    try:
        size, ratio = after["size_bytes"], before["size_bytes"] / after["size_bytes"]
        mark = "" if report.get("accepted") is True else " ✗"
        return f"{after['accuracy']:.4f}{mark}, {size_text(size)} ({ratio:.1f}x)"
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        return f"unreadable: {exc!r}"


def _evaluated_current_model(report_file: Path, info: dict[str, Any]) -> bool:
    """Whether the evaluation in ``report_file`` (classification_report.json) was of the model that
    ``info`` (its train_info.json) describes: evaluate copies the model's fingerprint into it."""
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
        evaluated = report.get("model_fingerprint", _NOT_RECORDED)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        evaluated = _NOT_RECORDED  # no proof which model the metrics are of
    return bool(evaluated == info.get("fingerprint"))


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


def _registered_versions(report: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Per architecture: its last decision's version (``champion`` marked) and the sha256 of the
    weights file it registered."""
    champion = (report.get("champion") or {}).get("version")
    versions: dict[str, tuple[str, str | None]] = {}
    for decision in report.get("decisions") or []:
        mark = " champion" if str(decision["version"]) == str(champion) else ""
        versions[decision["architecture"]] = (f"v{decision['version']}{mark}", decision.get("weights_sha256"))
    return versions


def _registered_cell(registered: tuple[str, str | None] | None, weights_file: Path) -> str:
    """The version registered from ``weights_file``, or ``stale`` where the decision was about other
    weights (the register stage keys versions by the sha256 of the weights file's bytes)."""
    if registered is None:
        return ""
    version, weights_sha = registered
    try:
        current = sha256_file(weights_file)
    except OSError:
        current = None
    return version if current is not None and weights_sha == current else stale("register")


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
    """One row per architecture: test accuracy, macro-F1, the compressed model's size and accuracy,
    size, training and inference speed, the ε spent (DP models; ``—`` otherwise), and its registered
    version (``champion`` marked) when ``registration`` (registration.json) exists.

    Test figures of an older model than ``models/<arch>/`` holds read ``stale: re-run
    evaluate@<arch>``, and a version registered from other weights ``stale: re-run register``.
    """
    versions: dict[str, tuple[str, str | None]] = {}
    caption = None
    if registration is not None:
        try:
            versions = _registered_versions(read_registration(registration) or {})
        except _UNREADABLE as exc:
            versions, caption = {}, f"{registration}: unreadable ({exc!r}); versions not shown"
    table = Table(title="Test-split results", caption=caption)
    for name, justify in [
        ("architecture", "left"),
        ("accuracy", "right"),
        ("macro-F1", "right"),
        ("compressed", "right"),
        ("parameters", "right"),
        ("epochs", "right"),
        ("fit time", "right"),
        ("inference samples/s", "right"),
        ("privacy ε", "right"),
        ("registered", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for arch in architectures:
        report_dir, model_dir = Path(reports_root) / arch, Path(models_root) / arch
        if not (report_dir / METRICS).is_file() or not (model_dir / TRAIN_INFO).is_file():
            table.add_row(arch, "not evaluated yet")  # rich leaves the other cells empty
            continue
        try:  # one bad file spoils its row, not the whole table
            info = read_train_info(model_dir / TRAIN_INFO)
            if _evaluated_current_model(report_dir / REPORT, info):
                accuracy, f1_macro, speed = _metric_cells(report_dir / METRICS)
            else:
                accuracy, f1_macro, speed = stale(f"evaluate@{arch}"), "", ""
        except DataValidationError as exc:
            table.add_row(arch, f"unreadable: {exc}")
            continue
        registered = _registered_cell(versions.get(arch), model_dir / WEIGHTS)
        compressed = compression_cell(report_dir / COMPRESSION_REPORT, info, arch)
        row = (accuracy, f1_macro, compressed, *_train_cells(info), speed, privacy_cell(info), registered)
        table.add_row(arch, *row)
    return table
