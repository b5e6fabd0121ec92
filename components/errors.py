"""Exceptions that mean "the user's input is wrong", as opposed to a bug.

Stage CLIs catch :class:`PipelineError` and print its message without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class PipelineError(Exception):
    """Base class for errors caused by bad input (params, data files, missing sources)."""


class ParamsError(PipelineError):
    """``params.yaml`` is unreadable or does not match the schema."""


class DataSourceError(PipelineError):
    """A data source cannot be found or opened (missing folder, missing files)."""


class DataValidationError(PipelineError):
    """A data file breaks a rule of the data contract.

    The message always names the offending file and the rule it breaks, so a user can find and
    fix the file without reading code.
    """

    def __init__(self, file: Path | str, rule: str, detail: str = "") -> None:
        self.file = str(file)
        self.rule = rule
        self.detail = detail
        message = f"{self.file}: {rule}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class ProjectSetupError(PipelineError):
    """The project folder is not set up as a tool the pipeline runs needs it (DVC outside git)."""


class TransientError(PipelineError):
    """A service the stage needs did not answer (tracking server down, timeout): worth a retry."""


class NoSpaceError(PipelineError):
    """The disk filled up while a stage wrote its output; the previous output was left as it was."""


# How a full disk reads in errors that carry only a message (safetensors' Rust io::Error).
_NO_SPACE = ("no space left on device", "os error 28", "storagefull")


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk: ``ENOSPC``, or a library's message saying so."""
    return _no_space_cause(exc) is not None


def no_space_error(exc: BaseException, path: Path | str) -> NoSpaceError | None:
    """``exc`` as a :class:`NoSpaceError` naming ``path`` (the output being written) when it is a
    full disk (:func:`is_no_space`); ``None`` otherwise."""
    cause = _no_space_cause(exc)
    if cause is None or isinstance(cause, NoSpaceError):
        return cause
    file = Path(str(getattr(cause, "filename", None) or path)).name
    writing = f" (writing {file})" if file != Path(path).name else ""
    return NoSpaceError(
        f"{path}: no space left on device{writing}; the previous output was left as it was: "
        "free some space and run the stage again"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _no_space_cause(exc: BaseException) -> BaseException | None:
    for current in _chain(exc):
        if isinstance(current, NoSpaceError):
            return current
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return current
        if any(marker in str(current).lower() for marker in _NO_SPACE):
            return current
    return None


class Preempted(PipelineError):
    """Stopped by SIGTERM (a scheduler preempting the job) or Ctrl-C, with its resume checkpoint kept:
    nothing was recorded as done, and the same command run again resumes (exit code 143)."""


# Exit codes of the stage CLIs, so a launcher can tell bad input from a service that was away.
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL
EXIT_NO_SPACE = 74  # EX_IOERR: the disk is full; nothing was replaced, free space and run again
EXIT_PREEMPTED = 143  # 128 + SIGTERM: stopped by SIGTERM/SIGINT with a checkpoint saved; run again to resume

# A launcher whose stage processes run under another launcher that does not pass their exit status
# on (``torchrun`` exits 1 whatever its workers exited with) sets this to an empty folder; each
# stage process that exits with one of the codes above then records it there as
# ``rank-<RANK>.exit`` (``RANK`` as torchrun sets it, 0 without one). See
# :func:`record_exit_code` and :mod:`components.training.launch`.
EXIT_CODE_DIR_ENV = "PIPELINE_EXIT_CODE_DIR"


def exit_code(exc: PipelineError) -> int:
    """The documented exit code of a stage that ended with ``exc``."""
    if isinstance(exc, Preempted):
        return EXIT_PREEMPTED
    if isinstance(exc, NoSpaceError):
        return EXIT_NO_SPACE
    return EXIT_TRANSIENT if isinstance(exc, TransientError) else EXIT_BAD_INPUT


def record_exit_code(code: int) -> None:
    """Record ``code`` in the folder named by ``PIPELINE_EXIT_CODE_DIR``, if set, before exiting with it.

    Best effort: the exit status itself still tells a direct parent.
    """
    folder = os.environ.get(EXIT_CODE_DIR_ENV)
    if not folder:
        return
    rank = os.environ.get("RANK", "0")
    with contextlib.suppress(OSError, ValueError):
        (Path(folder) / f"rank-{int(rank)}.exit").write_text(f"{code}\n", encoding="utf-8")


def recorded_exit_codes(folder: Path | str) -> dict[int, int]:
    """``{rank: exit code}`` that stage processes recorded in ``folder`` (see :func:`record_exit_code`)."""
    codes: dict[int, int] = {}
    for file in Path(folder).glob("rank-*.exit"):
        try:
            codes[int(file.name[len("rank-") : -len(".exit")])] = int(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return codes


_UNREACHABLE = (
    "connection refused",
    "max retries exceeded",
    "failed to establish a new connection",
    "read timed out",
    "temporarily unavailable",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a service that did not answer, not bad input or a bug."""
    for current in _chain(exc):
        if isinstance(current, TransientError | ConnectionError | TimeoutError):
            return True
        if isinstance(current, PipelineError):
            return False
        if any(marker in str(current).lower() for marker in _UNREACHABLE):
            return True
    return False
