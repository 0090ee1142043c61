"""The HTML report in a real browser: Debian's Chromium, headless, offline.

`--dump-dom` must show the tables (with the escaped run name as text), and a `--screenshot` is kept as a
test artifact: always under pytest's tmp path, and also copied to $REPRO_TEST_ARTIFACTS (a folder) when
that is set, e.g. `REPRO_TEST_ARTIFACTS=tests/artifacts pytest tests/test_report_browser.py`.
Skipped, with the reason, only where no Chromium is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from repro.report import build_report
from repro.report.figures import FIGURES
from test_report import PNG_SIGNATURE, write_fixture_runs

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")) if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync"]


def chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh one per launch
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *arguments],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def html_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    return build_report([write_fixture_runs(root)], root / "report").html


def test_dom_shows_the_tables(html_report, tmp_path):
    result = chromium(tmp_path, "--dump-dom", html_report.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert dom.count("<table") >= 8  # Tables 1, 2, 2 (exits), 3 per model x dataset, and the runs
    for heading in ("Table 1: test accuracy without early exit", "Table 2: early exit at the operating point"):
        assert heading in dom
    for text in ("83.00 ± 3.61", "78.94", "132.63 ≠", "128.34", "6.06108"):
        assert text in dom
    # The run named <script>alert(1) is text in a cell, never an element the browser parsed.
    assert "&lt;script&gt;alert(1)" in dom and "<script" not in dom.lower()
    assert dom.count('src="data:image/png;base64,') == len(FIGURES)


def test_screenshot_is_kept(html_report, tmp_path):
    shot = tmp_path / "report.png"
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", html_report.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        # Not a blank page: a rendered report has many distinct colours (text, shading, tables).
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
    artifacts = os.environ.get("REPRO_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report-screenshot.png")
