"""Atomic outputs: write to a temporary sibling, then rename into place.

A stage that crashes or rejects its input half-way leaves the previous version of its output
untouched and no half-written folder behind. Directories cannot be swapped with one ``rename`` on
every platform, so :func:`atomic_directory` renames the old version aside, renames the new one in
and only then deletes the old one. The two renames happen under an exclusive ``flock`` on the
parent folder, so two writers of the same output (a flow run and a ``dvc repro``, say) never
interleave; if a process dies between the two renames, the next writer restores the old version
first (:func:`_recover`). Temporary folders of writers that still run are left alone.

A full disk while writing is a :class:`~components.errors.NoSpaceError` naming the path (the
previous version stays). The ``.gitignore`` DVC keeps in the parent folder of file outputs
(``reports/<arch>/``) is carried into the new folder (:data:`KEPT_FILES`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.errors import no_space_error

_TMP_TAG = ".tmp-"
_OLD_TAG = ".old-"
_ACTIVE: set[Path] = set()
"""Temporary folders this process is writing right now (other threads' included)."""
KEPT_FILES = (".gitignore",)
"""Files of the replaced folder that the new one keeps unless the block wrote its own: DVC writes
a ``.gitignore`` listing the outputs into the folder holding file outputs (``reports/<arch>/``),
and without it git shows them as untracked. Only that: any other old file may be a stale output."""


def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}{tag}{os.getpid()}-{os.urandom(4).hex()}"


def _owner_alive(sibling: Path, tag: str) -> bool:
    """Whether the process named in a ``.<name><tag><pid>-<hex>`` sibling still runs."""
    try:
        pid = int(sibling.name.split(tag, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return sibling in _ACTIVE
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    return True


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target``'s parent folder (released if the process dies, too)."""
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _recover(target: Path) -> None:
    """Undo a swap interrupted between its two renames, and clear temp folders of dead writers.

    Call with the lock held.
    """
    leftovers = sorted(target.parent.glob(f".{target.name}{_OLD_TAG}*"))
    if leftovers and not target.exists():
        leftovers[-1].rename(target)
        leftovers = leftovers[:-1]
    for stale in leftovers:
        shutil.rmtree(stale, ignore_errors=True)
    for stale in sorted(target.parent.glob(f".{target.name}{_TMP_TAG}*")):
        if not _owner_alive(stale, _TMP_TAG):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``target`` only if the block succeeds.

    Example::

        with atomic_directory("data/prepared") as tmp:
            write_everything_into(tmp)
        # here data/prepared is the new version; on an exception it is the old one
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        _recover(target)
    tmp = _sibling(target, _TMP_TAG)
    tmp.mkdir()  # honours the umask, like the folder it replaces
    _ACTIVE.add(tmp)
    old = _sibling(target, _OLD_TAG)
    try:
        try:
            yield tmp
            with _locked(target):
                _keep_files(target, tmp)
                if target.exists():
                    target.rename(old)
                tmp.rename(target)
        except BaseException as exc:  # nothing replaced target (_recover undoes a half-done swap)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, Exception) and (full := no_space_error(exc, target)) is not None:
                raise full from exc
            raise
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(target.parent)
    finally:
        _ACTIVE.discard(tmp)


def _keep_files(target: Path, tmp: Path) -> None:
    """Copy :data:`KEPT_FILES` of the folder being replaced into ``tmp`` (unless written there)."""
    for name in KEPT_FILES:
        if (target / name).is_file() and not (tmp / name).exists():
            shutil.copy2(target / name, tmp / name)


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{_TMP_TAG}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, Exception) and (full := no_space_error(exc, path)) is not None:
            raise full from exc
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Stable JSON (sorted keys, two-space indent, trailing newline) so outputs are byte-identical."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as stable JSON, atomically."""
    atomic_write_text(path, dumps_json(obj))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
