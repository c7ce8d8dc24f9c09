"""The report in a real browser: headless Debian chromium renders every section, all images decode,
and the console stays silent. Install the browser with scripts/setup-browser.sh.

One chromium call takes a screenshot and dumps the DOM after the load event; the page's own script
sets body[data-rendered] to "ok" only when every <img> decoded. With --enable-logging=stderr chromium
writes every console message (log, warning, error, uncaught exception) as a line with ":CONSOLE";
the report writes none, so any such line fails the test.
"""

import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rewardlab.answers import QUESTIONS
from rewardlab.report.html import EVIDENCE, SCRIPT

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars", "--window-size=1280,3000"]


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: run scripts/setup-browser.sh (apt-get install chromium) first"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def render(chromium, page: Path, screenshot: Path) -> tuple[str, list[str]]:
    """(DOM after load, console lines) of `page` opened in a fresh profile; writes the screenshot."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [str(chromium), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--dump-dom",
             page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


class DomSections(HTMLParser):
    """body attributes; per section: heading text, and the content below the heading (text and images)."""

    def __init__(self):
        super().__init__()
        self.body, self.title, self.content, self._open, self._in_heading = {}, {}, {}, [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "section":
            self._open.append(a["data-section"])
            self.title[a["data-section"]] = self.content[a["data-section"]] = ""
        elif tag in ("h2", "h3"):
            self._in_heading = True
        elif tag == "img" and self._open:
            self.content[self._open[-1]] += "[img]"

    def handle_endtag(self, tag):
        if tag == "section":
            self._open.pop()
        elif tag in ("h2", "h3"):
            self._in_heading = False

    def handle_data(self, data):
        if self._open:
            (self.title if self._in_heading else self.content)[self._open[-1]] += data


def test_report_renders_in_chromium(chromium, fast_demo, tmp_path):
    report = fast_demo / "report.html"
    shot = tmp_path / "report.png"
    dom, console = render(chromium, report, shot)
    assert console == [], "\n".join(console)
    page = DomSections()
    page.feed(dom)
    n_imgs = len(re.findall(r"<img ", report.read_text()))
    assert page.body.get("data-rendered") == "ok", page.body
    assert page.body.get("data-images") == str(n_imgs) == "11"
    assert list(page.content) == list(QUESTIONS) + list(EVIDENCE)
    for sid, content in page.content.items():
        assert page.title[sid].strip() and content.strip(), sid
        assert "could not read" not in content, (sid, content)
        assert "Not run" not in content, (sid, content)  # the fast demo has every stage, the dialogue too
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    if os.environ.get("REWARDLAB_SCREENSHOT"):
        shutil.copy(shot, os.environ["REWARDLAB_SCREENSHOT"])


def test_browser_check_catches_broken_pages(chromium, tmp_path):
    """The checks are not vacuous: a broken image and a console error are both seen."""
    page = tmp_path / "broken.html"
    page.write_text(f'<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA">'
                    f'<script>console.error("boom");{SCRIPT}</script></body></html>')
    dom, console = render(chromium, page, tmp_path / "broken.png")
    assert 'data-rendered="broken-images:1"' in dom
    assert len(console) == 1 and '"boom"' in console[0]

