"""The front page as a newcomer meets it: README.md is short, every link in it and in docs/ leads somewhere,
every page of docs/ is one click from the README, and every table copied from a report still matches it."""

import re
from pathlib import Path

import pytest

from repro.report.readme_blocks import project_root, stale_blocks

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, *sorted(ROOT.glob("results/*/README.md"))]
README_MAX_LINES = 150  # a front page: what it is, set-up, a session, the headline results, links

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$")


def _prose_lines(text: str):
    """The lines outside fenced code (a link-like string in a code sample is not a link)."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield line


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens kept), spaces -> hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(m[1]) for line in _prose_lines(page.read_text(encoding="utf-8")) if (m := HEADING.match(line))}


def broken_links(page: Path) -> list[str]:
    """One line per relative link of `page` whose file, or whose #anchor in a Markdown file, does not exist."""
    broken = []
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target):
                continue  # https:, mailto:: not this repository's to check
            path, _, fragment = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                broken.append(f"{page.name}: {target} (no heading with that anchor)")
    return broken


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_copied_block_matches_its_committed_report(page):
    assert stale_blocks(page.read_text(encoding="utf-8"), project_root(page), page.parent) == []


def test_every_docs_page_is_one_click_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))}
    assert DOCS and [page.name for page in DOCS if page.resolve() not in linked] == []


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Results on real data (the `cpu` preset)\n\n## Table 1\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#table-1) [ok too](docs/a.md#results-on-real-data-the-cpu-preset) "
                    "[gone](docs/b.md) [no anchor](docs/a.md#table-2) [web](https://example.org/x)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["README.md: docs/b.md (no such file)", "README.md: docs/a.md#table-2 (no heading with that anchor)"]
