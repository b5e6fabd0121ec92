"""Path helpers shared by the file-based sources."""

from __future__ import annotations

from pathlib import Path

from components.config import DataParams
from components.errors import DataSourceError


def source_path(params: DataParams, root: Path) -> Path:
    """``data.path`` resolved against the project root; relative paths stay relative to it."""
    path = Path(params.path).expanduser()
    return path if path.is_absolute() else root / path


def require_dir(path: Path, source: str) -> Path:
    """``path`` if it is a folder, else a :class:`DataSourceError` naming ``data.path``."""
    if not path.is_dir():
        raise DataSourceError(
            f"data.path={path}: folder not found (data.source={source} reads its files from data.path)"
        )
    return path
