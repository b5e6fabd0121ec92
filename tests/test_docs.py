"""The docs stay true to the code: the generated params page, the defaults, the links, the README's size."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from components import params_doc
from components.config import ModelsParams
from components.models import FROM_DATA, REGISTRY
from tests.conftest import REPO

PAGES = sorted(
    [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "infra" / "README.md", *(REPO / "docs").glob("*.md")]
)
README_MAX_LINES = 260

# [text](target) outside code; the target may carry a "#anchor" and an optional "title".
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (lower case, punctuation dropped, spaces to -)."""
    anchors: set[str] = set()
    for line in _FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


def test_the_docs_exist_and_the_readme_links_to_every_page() -> None:
    docs = {p.name for p in (REPO / "docs").glob("*.md")}
    assert {"params.md", "troubleshooting.md"} <= docs
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    unlinked = sorted(name for name in docs if f"docs/{name}" not in readme)
    assert not unlinked, f"README.md links to no docs/{unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    """Each relative link names an existing file, and its #anchor a heading of that page."""
    assert not _broken_links(page), "\n".join(_broken_links(page))


def test_the_link_check_finds_a_broken_link_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading, with `code`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-heading-with-code) [gone](missing.md) [bad](there.md#nope) "
        "`[code](missing.md)` [web](https://example.com/x)\n",
        encoding="utf-8",
    )
    assert [b.split(":")[0] for b in _broken_links(page)] == ["missing.md", "there.md#nope"]


def test_the_readme_stays_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference text into docs/"


def test_the_params_page_is_generated_from_the_schema() -> None:
    """docs/params.md is exactly what `make docs` writes from components/config.py."""
    committed = params_doc.PAGE.read_text(encoding="utf-8")
    assert committed == params_doc.render(), "docs/params.md is out of date: run `make docs`"
    assert params_doc.main(["--check"]) == 0


def test_every_schema_field_has_a_meaning() -> None:
    """An undocumented key would render an empty cell: each field needs a docstring."""
    rows = [line for line in params_doc.render().splitlines() if line.startswith("| `")]
    empty = [row.split("|")[1].strip() for row in rows if row.rstrip().endswith("|  |")]
    assert rows
    assert not empty, f"fields without a docstring in components/config.py: {empty}"


@pytest.mark.parametrize("arch", list(REGISTRY))
def test_model_config_defaults_equal_the_params_defaults(arch: str) -> None:
    """The model dataclasses (torch only: a registered model carries a copy, so they cannot import
    the schema) keep the schema's defaults; old model.json files missing a key load with them.
    A schema ``auto`` is None in the dataclass: chosen from the input's shape there too."""
    config_cls, _ = REGISTRY[arch]
    section = getattr(ModelsParams(), arch).model_dump()
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(config_cls)
        if f.default is not dataclasses.MISSING and f.name not in FROM_DATA  # vocab_size: the tokenizer's
    }
    assert set(defaults) == set(section), f"{config_cls.__name__} and models.{arch} differ in keys"
    for key, value in section.items():
        expected = tuple(value) if isinstance(value, list) else None if value == "auto" else value
        assert defaults[key] == expected, f"{config_cls.__name__}.{key}: {defaults[key]!r} != {expected!r}"
