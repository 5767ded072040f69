"""Issue 29: the documentation site builds with warnings as errors (`mkdocs build --strict`, as `make docs` runs it),
and its landing page, one reproduction page and the configuration reference render in headless Chromium with their
images loaded (each image's natural size read in the page) and the theme's stylesheet applied. Skips, saying why,
only when mkdocs (the `docs` extra) or Chromium (Debian's `chromium` package) is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

# After the page has loaded, everything the test checks is written into the page, for --dump-dom to print
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.querySelectorAll("article img")].map(i => ({
    src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  const header = document.querySelector(".md-header");
  const report = {title: (document.querySelector("article h1") || {}).textContent || "", images: imgs,
                  rows: document.querySelectorAll("article table tbody tr").length,
                  styled: !!header && getComputedStyle(header).position === "sticky",
                  text: document.querySelector("article").innerText.length};
  const pre = document.createElement("pre");
  pre.id = "docs-probe";
  pre.textContent = JSON.stringify(report);
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs or mkdocs-material is not installed: `make docs` installs the docs extra, .[docs]")
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr[-3000:]
    return out


def _render(site, page: str, tmp_path) -> dict:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium: install Debian's package (apt-get install -y chromium) to open the site headless")
    html = (site / page).read_text()
    probe = site / page.replace(".html", ".probe.html")  # beside the page: its relative links and images hold
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="docs-probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"{page}: no probe in Chromium's DOM (exit {res.returncode}): {res.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))


@pytest.mark.slow
@pytest.mark.xdist_group("docs_site")  # one worker builds the site once for the three pages
@pytest.mark.parametrize("page,title,images,rows", [
    ("index.html", "overparam-dist", 1, 9),  # the README: its figure, the reproductions table
    ("reproductions/lee2019_linear.html", "Lee et al. 2019", 1, 0),
    ("reference/config.html", "Configuration reference", 0, 50),
])
def test_pages_render_with_their_images(site, tmp_path, page, title, images, rows):
    got = _render(site, page, tmp_path)
    assert got["title"].startswith(title), got["title"]
    assert got["styled"], "the theme's stylesheet did not apply"
    assert len(got["images"]) >= images, got["images"]
    for img in got["images"]:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img  # loaded, at its natural size
    assert got["rows"] >= rows and got["text"] > 1000, got
