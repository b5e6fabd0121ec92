"""``manifest.json``: what a data stage wrote, with hashes, so later stages can trust and version it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.errors import DataValidationError
from components.hashing import sha256_file

MANIFEST = "manifest.json"


def read_manifest(folder: Path, stage: str) -> dict[str, Any]:
    """Load ``folder/manifest.json`` written by ``stage`` and check every listed file's sha256."""
    path = folder / MANIFEST
    if not path.is_file():
        raise DataValidationError(path, f"manifest not found (run the {stage} stage first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(path, "manifest is not valid JSON", str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("stage") != stage:
        raise DataValidationError(path, f"not a manifest written by the {stage} stage")
    for name, entry in manifest.get("splits", {}).items():
        file = folder / entry["file"]
        if not file.is_file():
            raise DataValidationError(file, f"file listed in {path} for split {name!r} is missing")
        if sha256_file(file) != entry["sha256"]:
            raise DataValidationError(
                file, f"sha256 differs from {path}: the file changed after {stage} wrote it"
            )
    return manifest
