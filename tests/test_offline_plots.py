"""``dvc plots show`` offline: the template inlines vega, and a browser with no network draws a plot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from components.offline_plots import template_html, write_template
from tests.conftest import REPO


def test_the_template_refuses_a_bundle_that_would_break_the_page() -> None:
    page = template_html("window.vegaEmbed = 1;", "1.0")
    assert "{plot_divs}" in page
    assert "{scripts}" not in page  # DVC's CDN script tags have nowhere to go
    with pytest.raises(ValueError, match="</script"):
        template_html("var s = '</SCRIPT>';", "1.0")
    with pytest.raises(ValueError, match=r"\{plot_divs\}"):
        template_html("var s = '{plot_divs}';", "1.0")
    config = (REPO / ".dvc" / "config").read_text()
    assert "html_template = plots/offline.html" in config  # where write_template writes by default


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_a_vega_plot_renders_in_a_browser_without_network(tmp_path: Path) -> None:
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    template = write_template(tmp_path / "offline.html")
    rows = [{"actual": "a", "predicted": "a", "rev": "workspace", "filename": "p.csv"}] * 3
    renderer = VegaRenderer(rows, "p.csv", template="confusion", x="actual", y="predicted")
    page = render_html([renderer], tmp_path / "out" / "index.html", html_template=template)
    assert "cdn.jsdelivr" not in Path(page).read_text(encoding="utf-8")
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--proxy-server=127.0.0.1:9", "--virtual-time-budget=5000", "--dump-dom", f"file://{page}"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert 'class="marks"' in dom  # vega drew the chart (an svg or canvas): it had no CDN to come from
