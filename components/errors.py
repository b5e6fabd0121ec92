"""Exceptions that mean "the user's input is wrong", as opposed to a bug.

Stage CLIs catch :class:`PipelineError` and print its message without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

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


class TransientError(PipelineError):
    """A service the stage needs did not answer (tracking server down, timeout): worth a retry."""


# Exit codes of the stage CLIs, so a launcher can tell bad input from a service that was away.
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL

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
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TransientError | ConnectionError | TimeoutError):
            return True
        if isinstance(current, PipelineError):
            return False
        if any(marker in str(current).lower() for marker in _UNREACHABLE):
            return True
        current = current.__cause__ or current.__context__
    return False
