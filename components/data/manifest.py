"""``manifest.json``: what a stage wrote, with hashes, so later stages can trust and version it.

The data stages list their splits (and :data:`HASHED_FILES`); the train stage lists every file of
the model folder under ``files`` (:func:`write_file_manifest`), so a changed or corrupted file is
refused by name instead of being scored or registered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.atomic import dumps_json
from components.errors import DataValidationError
from components.hashing import sha256_file

MANIFEST = "manifest.json"
STATS = "stats.json"
TOKENIZER = "tokenizer.json"

REQUIRED_KEYS: dict[str, dict[str, type]] = {
    "ingest": {"source": str, "num_classes": int, "class_names": list, "splits": dict},
    "preprocess": {
        "source": str,
        "num_classes": int,
        "class_names": list,
        "image_shape": list,
        "stats_sha256": str,
        "splits": dict,
    },
    "train": {"files": dict},
    "compress": {"files": dict},  # a compressed model folder (components/compression/folder.py)
}
"""Top-level keys (and their JSON types) that the readers of each stage's manifest rely on."""

HASHED_FILES: dict[str, dict[str, str]] = {"preprocess": {"stats_sha256": STATS}}
"""Per stage, files besides the splits whose sha256 the manifest records: key -> file name."""

TEXT_REQUIRED_KEYS: dict[str, dict[str, type]] = {
    "preprocess": {
        **{k: v for k, v in REQUIRED_KEYS["preprocess"].items() if k != "image_shape"},
        "max_length": int,
        "vocab_size": int,
        "tokenizer_sha256": str,
    }
}
"""What replaces :data:`REQUIRED_KEYS` for a manifest with ``"kind": "text"`` (no image shape)."""
TEXT_HASHED_FILES: dict[str, dict[str, str]] = {
    "preprocess": {"stats_sha256": STATS, "tokenizer_sha256": TOKENIZER}
}
"""What replaces :data:`HASHED_FILES` for a manifest with ``"kind": "text"``."""


def is_text(manifest: dict[str, Any]) -> bool:
    """Whether a data stage's manifest describes text (``"kind": "text"``; images have no kind)."""
    return manifest.get("kind") == "text"


def write_file_manifest(folder: Path, stage: str, names: Sequence[str]) -> dict[str, Any]:
    """Write ``folder/manifest.json`` recording the sha256 of each of ``names`` (files in ``folder``)
    under ``files``, as written by ``stage``; :func:`read_manifest` checks them. Write it last."""
    manifest = {"stage": stage, "files": {name: sha256_file(folder / name) for name in names}}
    (folder / MANIFEST).write_text(dumps_json(manifest), encoding="utf-8")
    return manifest


def read_manifest(
    folder: Path, stage: str, required: Sequence[str] = (), splits: Sequence[str] | None = None
) -> dict[str, Any]:
    """Load ``folder/manifest.json`` written by ``stage``, check its structure, and check the sha256
    of every file it lists (the splits, ``files``, and :data:`HASHED_FILES` such as ``stats.json``).
    ``required``: file names the manifest must list under ``files`` (the ones the caller reads).
    ``splits``: check only these splits' files (training never opens the test split); None: all.

    Every way for it to be wrong (missing, not JSON, a key missing or of the wrong type, a listed
    file missing or changed) is a :class:`DataValidationError` naming the file, not a traceback.
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise DataValidationError(path, f"manifest not found (run the {stage} stage first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(path, "manifest is not valid JSON", str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("stage") != stage:
        raise DataValidationError(path, f"not a manifest written by the {stage} stage")
    _check_structure(manifest, path, stage)
    for name in required:
        if name not in manifest.get("files", {}):
            raise DataValidationError(path, f"must list {name} and its sha256 under 'files'")
    for name, entry in manifest.get("splits", {}).items():
        if splits is None or name in splits:
            _check_hash(folder / entry["file"], entry["sha256"], path, stage, f"for split {name!r}")
    for name, expected in manifest.get("files", {}).items():
        _check_hash(folder / name, expected, path, stage, "")
    for key, file_name in (TEXT_HASHED_FILES if is_text(manifest) else HASHED_FILES).get(stage, {}).items():
        _check_hash(folder / file_name, manifest[key], path, stage, f"as {key}")
    return manifest


def _check_structure(manifest: dict[str, Any], path: Path, stage: str) -> None:
    """The keys readers use are there with the right types; each split entry names a file in the
    same folder and its sha256; ``class_names`` holds ``num_classes`` strings."""
    required = TEXT_REQUIRED_KEYS if is_text(manifest) else REQUIRED_KEYS
    for key, kind in required.get(stage, {"splits": dict}).items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DataValidationError(
                path,
                f"manifest of the {stage} stage must hold {key!r} as a JSON {_json_type(kind)}",
                f"got {type(value).__name__ if key in manifest else 'nothing'}",
            )
    for name, entry in manifest.get("splits", {}).items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and isinstance(entry.get("sha256"), str)
            and Path(entry["file"]).name == entry["file"]
        ):
            raise DataValidationError(
                path,
                f"split {name!r} must be an object with 'file' (a file name in {path.parent}) and 'sha256'",
                f"got {json.dumps(entry)[:200]}",
            )
    for name, expected in manifest.get("files", {}).items():
        if not (isinstance(expected, str) and Path(name).name == name):
            raise DataValidationError(
                path,
                f"'files' must map file names in {path.parent} to their sha256",
                f"got {json.dumps({name: expected})[:200]}",
            )
    if "class_names" in manifest and "num_classes" in manifest:
        names = manifest["class_names"]
        if len(names) != manifest["num_classes"] or not all(isinstance(n, str) for n in names):
            raise DataValidationError(
                path,
                "class_names must be num_classes strings",
                f"num_classes {manifest['num_classes']}, {len(names)} class name(s)",
            )


def _json_type(kind: type) -> str:
    return {str: "string", int: "integer", list: "array", dict: "object"}.get(kind, kind.__name__)


def _check_hash(file: Path, expected: str, manifest: Path, stage: str, role: str) -> None:
    if not file.is_file():
        raise DataValidationError(file, f"file listed in {manifest}{f' {role}' if role else ''} is missing")
    if sha256_file(file) != expected:
        raise DataValidationError(
            file, f"sha256 differs from {manifest}: the file changed after {stage} wrote it"
        )
