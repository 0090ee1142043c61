"""README sections copied from committed reports, so a table in the README cannot differ from its report.

A block in a Markdown file names a committed report and one of its sections:

    <!-- from results/gates/report/report.md: At equal cost -->
    ...the section's body, as that report has it...
    <!-- end -->

A report groups a section's tables under bold labels on lines of their own (`**VGG-13 · CIFAR-10**`);
`<!-- from PATH: HEADING | LABEL -->` copies one group: its label line and what follows, up to the next
label line, subsection or the section's end.

`fill` replaces every block's body with the named section's body (from below its heading to the next
heading of the same or a higher level, outside fenced code; relative inline links and images rewritten
to stay valid from the README's folder, links to the report's own anchors pointed into the report). A
test checks the repository's README, so a block that no longer matches its committed report fails CI
(prose beside a block is not checked: quote numbers in blocks). Re-render the report
(repro.report.committed), then:

    python -m repro.report.readme_blocks README.md docs/*.md            # rewrite the blocks
    python -m repro.report.readme_blocks README.md docs/*.md --check    # exit 1, naming each stale block

A file in a subfolder (docs/) names its reports relative to itself (`../results/...`); they must lie in
the project (the nearest folder above holding pyproject.toml or .git).
"""

from __future__ import annotations

import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError
from repro.rundir import atomic_write_text

# Markers sit at the start of a line. A block's body may not contain another marker: an unpaired one is an
# error, never a longer match.
BLOCK = re.compile(r"^<!-- from (?P<source>[^:>\n]+?): (?P<heading>[^>\n]+?) -->\n"
                   r"(?P<body>(?:(?!^<!-- from |^<!-- end -->).)*?)^<!-- end -->", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"^[ \t]*<!--\s*(?:from\b|end\s*-->)", re.MULTILINE)
HEADING = re.compile(r"^(#{1,6}) (.+?)(?:\s+#+)?\s*$")
GROUP_LABEL = re.compile(r"^\*\*(?P<label>[^*\n]+)\*\*\s*$")
GROUP_SEPARATOR = " | "  # between a section's heading and a group's label in a block's marker
FENCE = re.compile(r"^\s*(```|~~~)")
# Inline links and images with a relative target (no scheme, not absolute); an optional "title" is kept.
RELATIVE_LINK = re.compile(r"(!?\[[^\]]*\]\()(?![A-Za-z][A-Za-z0-9+.-]*:|/)([^)\s]+)((?:\s+\"[^\"]*\")?\))")


@dataclass(frozen=True)
class Block:
    source: str  # the report, relative to the Markdown file's folder
    heading: str  # the section's heading text, without the leading #s; "HEADING | LABEL" for one group
    body: str  # what the file holds now between the markers


def find_blocks(text: str) -> list[Block]:
    """Every block; a marker that is not part of a well-formed block is an error (a typo would otherwise
    leave a block unchecked, or an unpaired end marker swallow the prose up to the next one)."""
    matches = list(BLOCK.finditer(text))
    inside = [(m.start(), m.end()) for m in matches]
    for marker in MARKER.finditer(text):
        if not any(start <= marker.start() < end for start, end in inside):
            line = text.count("\n", 0, marker.start()) + 1
            raise ReproError(f"line {line}: a README block marker without its pair; a block is <!-- from PATH: HEADING --> "
                             "on a line of its own, the copied section, then <!-- end --> on a line of its own")
    return [Block(m["source"].strip(), m["heading"].strip(), m["body"]) for m in matches]


def _headings(lines: list[str]):
    """(index, level, text) of every Markdown heading outside fenced code."""
    fenced = False
    for index, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            yield index, len(match[1]), match[2]


def section_body(report: str, heading: str) -> str:
    """The body under `heading` in a Markdown text, up to the next heading of the same or a higher level,
    without leading or trailing blank lines."""
    lines = report.splitlines()
    headings = list(_headings(lines))
    found = [(i, level) for i, level, text in headings if text == heading]
    if not found:
        raise ReproError(f'no section "{heading}" in the report')
    if len(found) > 1:
        raise ReproError(f'the report has {len(found)} sections "{heading}"; a block needs a heading that occurs once')
    index, level = found[0]
    end = next((i for i, other, _ in headings if i > index and other <= level), len(lines))
    body = "\n".join(lines[index + 1 : end]).strip("\n")
    if MARKER.search(body):
        raise ReproError(f'section "{heading}" contains a README block marker; it cannot be copied between markers')
    return body


def group_body(section: str, label: str) -> str:
    """The group of a section's body that starts at the line `**label**`: that line and the lines after it,
    up to the next group label line, without trailing blank lines. Only the section's own text counts, not
    its subsections (whose groups repeat the same labels)."""
    lines = section.splitlines()
    subsection = next((index for index, _, _ in _headings(lines)), len(lines))
    lines = lines[:subsection]
    starts = [i for i, line in enumerate(lines) if GROUP_LABEL.match(line)]
    found = [i for i in starts if GROUP_LABEL.match(lines[i])["label"].strip() == label]
    if not found:
        raise ReproError(f'no group "**{label}**" in the section')
    if len(found) > 1:
        raise ReproError(f'the section has {len(found)} groups "**{label}**"; a block needs a label that occurs once')
    end = next((i for i in starts if i > found[0]), len(lines))
    return "\n".join(lines[found[0] : end]).strip("\n")


def _rebase_links(body: str, report: str) -> str:
    """Links relative to the report -> relative to the README's folder; links to the report's own anchors
    point into the report."""
    folder = posixpath.dirname(report)

    def rebase(match: re.Match) -> str:
        target = match[2]
        target = report + target if target.startswith("#") else posixpath.normpath(posixpath.join(folder, target))
        return f"{match[1]}{target}{match[3]}"
    return RELATIVE_LINK.sub(rebase, body)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReproError(f"{what}: not UTF-8 text") from None
    except OSError as error:
        raise ReproError(f"{what}: cannot read it ({error.strerror or error})") from None


def project_root(markdown: Path) -> Path:
    """The folder a Markdown file's blocks may read reports from: the nearest folder at or above the file's
    own that holds pyproject.toml or .git (so docs/*.md can copy from ../results/), else the file's folder."""
    folder = markdown.resolve().parent
    return next((f for f in (folder, *folder.parents) if (f / "pyproject.toml").exists() or (f / ".git").exists()), folder)


def expected_body(block: Block, root: Path, folder: Path | None = None) -> str:
    """The body `block` should hold: `block.source` is relative to `folder` (the Markdown file's own,
    `root` by default) and must lie under `root`."""
    what = f"README block from {block.source}"
    path = ((folder or root) / block.source).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ReproError(f"{what}: the report must lie under {root} (a path relative to the Markdown file's folder)")
    heading, _, label = block.heading.partition(GROUP_SEPARATOR)
    try:
        body = section_body(_read(path, what), heading.strip())
        if label.strip():
            body = group_body(body, label.strip())
    except ReproError as error:
        message = str(error)
        raise ReproError(message if message.startswith(what) else f"{what}: {message}") from None
    return _rebase_links(body, Path(block.source).as_posix()) + "\n"


def fill(text: str, root: Path, folder: Path | None = None) -> str:
    """`text` with every block's body replaced by its committed section's body."""
    find_blocks(text)  # refuses unpaired markers before anything is replaced

    def replace(match: re.Match) -> str:
        block = Block(match["source"].strip(), match["heading"].strip(), match["body"])
        return f"<!-- from {match['source']}: {match['heading']} -->\n{expected_body(block, root, folder)}<!-- end -->"
    return BLOCK.sub(replace, text)


def stale_blocks(text: str, root: Path, folder: Path | None = None) -> list[str]:
    """One line per block whose body differs from its committed section."""
    return [f'{block.source}: "{block.heading}" differs from the committed report'
            for block in find_blocks(text) if block.body != expected_body(block, root, folder)]


def _one_file(path: Path, check: bool) -> int:
    root, folder = project_root(path), path.resolve().parent
    try:
        text = _read(path, str(path))
        if check:
            stale = stale_blocks(text, root, folder)
            for line in stale:
                print(f"{path}: {line}", file=sys.stderr)
            return 1 if stale else 0
        updated = fill(text, root, folder)
        changed = sum(a.body != b.body for a, b in zip(find_blocks(text), find_blocks(updated)))
        if changed:
            atomic_write_text(path, updated)
    except ReproError as error:
        print(f"{path}: {error}" if not str(error).startswith(str(path)) else str(error), file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{path}: cannot write it ({error.strerror or error})", file=sys.stderr)
        return 1
    print(f"updated {changed} block(s) in {path}" if changed else f"{path}: every block matches its committed report")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [Path(a) for a in args if a != "--check"]
    if not paths:
        print("usage: python -m repro.report.readme_blocks FILE.md... [--check]", file=sys.stderr)
        return 2
    return max(_one_file(path, check) for path in paths)


if __name__ == "__main__":
    sys.exit(main())
