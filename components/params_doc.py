"""Render the params reference (``docs/params.md``) from the schema in :mod:`components.config`.

The schema is the one source of every key, default, allowed value and meaning (the field
docstrings); this module only formats it. ``python -m components.params_doc`` rewrites the page,
``--check`` exits 1 when the committed page differs from what the schema gives (``make docs``).
"""

from __future__ import annotations

import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from components.config import Params, validate_params
from components.errors import ParamsError

PAGE = Path(__file__).resolve().parent.parent / "docs" / "params.md"

_INTRO = """\
# Params reference

<!-- Generated from components/config.py by `make docs` (python -m components.params_doc): edit the
schema's field docstrings there, not this file. tests/test_docs.py fails when the two differ. -->

`params.yaml` is the single source of settings, and every key is spelled out in it so that DVC
tracks it (a test checks that the file holds exactly these defaults). The whole file is validated
before any stage does anything: unknown keys, wrong types (no `"5"` → 5 coercion), out-of-range
values, duplicate keys and YAML syntax errors fail with the key path and the allowed values.
Numbers are read as YAML 1.2 (and DVC) read them, so `1e-3` is a float; `--set` values of the flow
likewise, and an error in one names it
(`params.yaml (overridden: train.learning_rate): invalid settings: ...`). For example:

```
ingest failed: {example}
```

Change a key in `params.yaml`, or for one experiment `uv run dvc exp run -S train.max_epochs=5`
(DVC) or `uv run python -m flows.pipeline --set train.max_epochs=5` (the flow).
"""


# Three mistakes at once; the page shows the message the schema really gives for them.
_BAD_PARAMS = {
    "data": {"source": "cifar"},
    "preprocess": {"val_fraction": 0.5, "test_fraction": 0.6},
    "trian": {},
}


def _example_error() -> str:
    try:
        validate_params(_BAD_PARAMS, source="params.yaml")
    except ParamsError as exc:
        return str(exc)
    raise AssertionError("the example params were accepted")


def _literal(value: Any) -> str:
    """A value as it is written in params.yaml (YAML), in code style."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple):
        return "`[" + ", ".join(_literal(v).strip("`") for v in value) + "]`"
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):  # a mapping (sweep.space) in YAML flow style
        items = (f"{k}: {_literal(v).strip('`')}" for k, v in value.items())
        return "`{" + ", ".join(items) + "}`"
    return f"`{value}`"


def _number(value: Any) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(metadata: list[Any]) -> str:
    """``Ge(1)`` -> "≥ 1", ``Gt(0) Lt(1)`` -> "in (0, 1)"."""
    lower = next((m for m in metadata if isinstance(m, at.Ge | at.Gt)), None)
    upper = next((m for m in metadata if isinstance(m, at.Le | at.Lt)), None)
    low = _number(lower.ge if isinstance(lower, at.Ge) else lower.gt) if lower else ""
    high = _number(upper.le if isinstance(upper, at.Le) else upper.lt) if upper else ""
    if lower and upper:
        opening = "[" if isinstance(lower, at.Ge) else "("
        closing = "]" if isinstance(upper, at.Le) else ")"
        return f" in {opening}{low}, {high}{closing}"
    if lower:
        return f" {'≥' if isinstance(lower, at.Ge) else '>'} {low}"
    if upper:
        return f" {'≤' if isinstance(upper, at.Le) else '<'} {high}"
    return ""


_NAMES = {int: "integer", float: "number", bool: "`true`/`false`", str: "string", type(None): "`null`"}


def allowed(annotation: Any, metadata: list[Any] | None = None) -> str:
    """What a field accepts, in words, from its type and constraints."""
    metadata = list(metadata or [])
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        for item in extra:
            metadata += item.metadata if isinstance(item, FieldInfo) else [item]
        return allowed(inner, metadata)
    if origin is Literal:
        return ", ".join(_literal(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(allowed(arm) for arm in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        non_empty = any(isinstance(m, at.MinLen) and m.min_length >= 1 for m in metadata)
        items = re.sub(r"^(integer|number|string)", r"\1s", allowed(item))
        return f"{'non-empty ' if non_empty else ''}list of {items}"
    if annotation is str and any(isinstance(m, at.MinLen) and m.min_length >= 1 for m in metadata):
        return "non-empty string"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation))) + _bounds(metadata)


def _prose(text: str | None) -> str:
    """A docstring as one Markdown table cell: reST ``code`` to `code`, one line, pipes escaped."""
    one_line = " ".join((text or "").split())
    return re.sub(r"``(.+?)``", r"`\1`", one_line).replace("|", "\\|")


def _section(model: type[BaseModel], prefix: str, level: int) -> list[str]:
    """A heading, the section's docstring, a table of its leaf keys, then its sub-sections."""
    lines = [f"{'#' * level} `{prefix.rstrip('.')}`", "", _prose(model.__doc__), ""]
    rows, nested = [], []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            nested.append((field.annotation, f"{prefix}{name}."))
            continue
        meaning = _prose(field.description)
        rows.append(
            f"| `{prefix}{name}` | {_literal(field.get_default())} | "
            f"{allowed(field.annotation, field.metadata)} | {meaning} |"
        )
    if rows:
        lines += ["| key | default | allowed | meaning |", "|---|---|---|---|", *rows, ""]
    for sub, sub_prefix in nested:
        lines += _section(sub, sub_prefix, level + 1)
    return lines


def render() -> str:
    """The whole page, as ``docs/params.md`` must hold it."""
    lines = [_INTRO.format(example=_example_error())]
    for name, field in Params.model_fields.items():
        section = field.annotation
        assert isinstance(section, type)
        assert issubclass(section, BaseModel)
        lines += _section(section, f"{name}.", level=2)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    """Write the page, or with ``--check`` report whether the committed one is current."""
    text = render()
    if "--check" in argv:
        if PAGE.is_file() and PAGE.read_text(encoding="utf-8") == text:
            return 0
        print(f"{PAGE} is out of date with components/config.py: run `make docs`", file=sys.stderr)
        return 1
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
