"""The site works offline, in a real browser: every diagram renders, nothing is fetched from
the network, and no page logs an error.

The site is built (mkdocs build --strict, with the Mermaid script fetched once from the npm
registry by scripts/docs_hooks.py) and served from 127.0.0.1; Debian's headless `chromium`,
driven by Playwright (whose own browsers are never downloaded), opens each page with a
diagram, with every host but 127.0.0.1 unresolvable and every other request aborted (and
counted). Material draws each diagram into a closed shadow root; the test opens shadow
roots before the page's scripts run, only so that it can look inside. A screenshot of one
page's diagram is kept in build/test-artifacts/. scripts/test.sh installs chromium with apt-get when
run as root; without it (or without npm for the Mermaid script) the test skips and says why.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MERMAID_SCRIPT = "assets/javascripts/mermaid.min.js"
FENCE = re.compile(r"^\s*```mermaid\s*$", re.MULTILINE)

# Before any page script: shadow roots open, so the test can see the rendered diagrams.
OPEN_SHADOW_ROOTS = """
const attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) {
    return attach.call(this, { ...init, mode: "open" });
};
"""
DIAGRAMS_DRAWN = """
(expected) => {
    const hosts = [...document.querySelectorAll("div.mermaid")];
    const drawn = hosts.filter((h) => h.shadowRoot && h.shadowRoot.querySelector("svg"));
    return drawn.length >= expected && !document.querySelector("pre.mermaid");
}
"""


def pages_with_diagrams() -> list[tuple[str, int]]:
    """(page URL relative to the site, number of diagrams) for every page that has one."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        count = len(FENCE.findall(page.read_text(encoding="utf-8")))
        if count:
            rel = page.relative_to(DOCS).with_suffix("")
            url = "" if rel.name == "index" else f"{rel.as_posix()}/"
            if rel.name == "index" and rel.parent != Path("."):
                url = f"{rel.parent.as_posix()}/"
            found.append((url, count))
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if CHROMIUM is None:
        pytest.skip("no chromium: Debian's package (scripts/test.sh installs it when root)")
    pytest.importorskip("playwright.sync_api", reason="the docs extra's playwright")
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)]
    # The caller's environment (npm, its HOME), and mkdocs from this interpreter's venv.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    if not (out / MERMAID_SCRIPT).is_file():
        pytest.skip("no Mermaid script in the site: npm was not available at build time")
    return out


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_pages_with_diagrams_are_found() -> None:
    # Guards the next test: were the pattern to find nothing, it would check nothing.
    pages = dict(pages_with_diagrams())
    assert sum(pages.values()) >= 9 and "how-pooling-works/" in pages


def test_every_diagram_renders_offline_without_errors(base_url: str) -> None:
    from playwright.sync_api import Route, sync_playwright

    blocked: list[str] = []
    errors: list[str] = []

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    offline = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[offline, "--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", only_local)
            context.add_init_script(OPEN_SHADOW_ROOTS)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            for url, count in pages_with_diagrams():
                page.goto(base_url + url, wait_until="load")
                page.wait_for_function(DIAGRAMS_DRAWN, arg=count, timeout=20_000)
                assert not errors, f"{url}: console errors: {errors}"
                if url == "how-pooling-works/":  # the artefact: a diagram as drawn
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    shot = ARTIFACTS / "how-pooling-works-diagram.png"
                    page.locator("div.mermaid").first.screenshot(path=str(shot))
            page.goto(base_url + "demo/", wait_until="load")
            widths = page.eval_on_selector_all(
                "img[src$='.svg']", "(imgs) => imgs.map((i) => i.naturalWidth)"
            )
            assert len(widths) == 5 and all(widths), f"demo frames not drawn: {widths}"
            assert not errors, f"demo/: console errors: {errors}"
        finally:
            browser.close()
    assert not blocked, f"the site reached for the network: {blocked}"


def test_demo_frames_need_no_network() -> None:
    for frame in sorted((DOCS / "demo").glob("*.svg")):
        svg = frame.read_text(encoding="utf-8")
        assert "@font-face" not in svg and not re.search(r"url\(\s*['\"]?http", svg), frame.name
        texts = re.findall(r"<text [^>]*textLength[^>]*>", svg)
        assert texts and all('lengthAdjust="spacingAndGlyphs"' in t for t in texts), frame.name
