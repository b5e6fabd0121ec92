"""The HTML template that makes ``dvc plots show`` render without internet.

DVC's own page loads vega, vega-lite and vega-embed from a CDN (its ``{scripts}`` placeholder), so
offline it shows nothing but the images. This template has no ``{scripts}`` placeholder: the three
libraries are inlined from ``vl_convert.javascript_bundle()`` (the pinned ``vl-convert-python``
package), which defines ``vegaEmbed``, ``vega`` and ``vegaLite`` on ``window`` as DVC's plot divs
expect. ``.dvc/config`` names the file (``plots.html_template``); it is generated, not committed:
``make install`` writes it when missing, ``make plots`` writes it and runs ``dvc plots show``.

Run: ``python -m components.offline_plots [--out .dvc/plots/offline.html]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components.atomic import atomic_write_text

DEFAULT_OUT = Path(".dvc/plots/offline.html")
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")
# What DVC's plot divs call: ``vegaEmbed('#id', spec)`` as a global.
GLOBALS = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega, vega-lite and vega-embed: vl_convert.javascript_bundle() of vl-convert-python VERSION -->
    <script>BUNDLE</script>
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template_html(bundle: str, version: str) -> str:
    """The template around ``bundle`` (JavaScript), which must neither end the script element nor
    hold one of DVC's placeholders (DVC replaces them anywhere in the page)."""
    if "</script" in bundle.lower():
        raise ValueError("the JavaScript bundle holds '</script', which would end its script element")
    found = [name for name in PLACEHOLDERS if name in bundle]
    if found:
        raise ValueError(f"the JavaScript bundle holds DVC's placeholder(s) {', '.join(found)}")
    return PAGE.replace("VERSION", version).replace("BUNDLE", bundle)


def write_template(out: Path = DEFAULT_OUT) -> Path:
    """Write the template to ``out`` (atomically); its path."""
    from importlib.metadata import version

    import vl_convert

    html = template_html(vl_convert.javascript_bundle(GLOBALS), version("vl-convert-python"))
    atomic_write_text(out, html)
    return out


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Template file (.dvc/config's html_template).")] = DEFAULT_OUT,
) -> None:
    """Write the offline HTML template for ``dvc plots show``."""
    path = write_template(out)
    typer.echo(f"wrote {path} ({path.stat().st_size:,} bytes): dvc plots show now renders offline")


if __name__ == "__main__":
    app()
