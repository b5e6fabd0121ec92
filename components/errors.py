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
