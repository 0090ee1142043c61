"""README sections copied from committed reports, so the README never states a number they do not hold.

A block in a Markdown file names a committed report and one of its sections:

    <!-- from results/gates/report/report.md: At equal cost -->
    ...the section's body, as that report has it...
    <!-- end -->

`fill` replaces every block's body with the named section's body (from below its heading to the next
heading of the same or a higher level; relative links and images rewritten to stay valid from the
README's folder). A test runs `check` on the repository's README, so a block that no longer matches its
committed report fails CI; re-render the report (repro.report.committed), then:

    python -m repro.report.readme_blocks README.md            # rewrite the blocks
    python -m repro.report.readme_blocks README.md --check    # exit 1, naming each stale block
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError
from repro.rundir import atomic_write_text

BLOCK = re.compile(r"<!-- from (?P<source>[^:>]+?): (?P<heading>[^>]+?) -->\n(?P<body>.*?)<!-- end -->", re.DOTALL)
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
RELATIVE_LINK = re.compile(r"(!?\[[^\]]*\]\()(?!https?:|#|/|mailto:)([^)\s]+)(\))")


@dataclass(frozen=True)
class Block:
    source: str  # the report, relative to the Markdown file's folder
    heading: str  # the section's heading text, without the leading #s
    body: str  # what the file holds now between the markers


def find_blocks(text: str) -> list[Block]:
    return [Block(m["source"].strip(), m["heading"].strip(), m["body"]) for m in BLOCK.finditer(text)]


def section_body(report: str, heading: str) -> str:
    """The body under `heading` in a Markdown text, up to the next heading of the same or a higher level,
    without leading or trailing blank lines."""
    lines = report.splitlines()
    for index, line in enumerate(lines):
        match = HEADING.match(line)
        if match and match[2] == heading:
            level = len(match[1])
            end = next((j for j in range(index + 1, len(lines))
                        if (m := HEADING.match(lines[j])) and len(m[1]) <= level), len(lines))
            return "\n".join(lines[index + 1 : end]).strip("\n")
    raise ReproError(f'no section "{heading}" in the report')


def _rebase_links(body: str, report_folder: str) -> str:
    """Links relative to the report's folder -> relative to the README's folder."""
    return RELATIVE_LINK.sub(lambda m: f"{m[1]}{Path(report_folder, m[2]).as_posix()}{m[3]}", body)


def expected_body(block: Block, root: Path) -> str:
    path = root / block.source
    try:
        report = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ReproError(f"README block from {block.source}: cannot read it ({error.strerror or error})") from None
    try:
        body = section_body(report, block.heading)
    except ReproError as error:
        raise ReproError(f"README block from {block.source}: {error}") from None
    return _rebase_links(body, os.path.dirname(block.source)) + "\n"


def fill(text: str, root: Path) -> str:
    """`text` with every block's body replaced by its committed section's body."""
    def replace(match: re.Match) -> str:
        block = Block(match["source"].strip(), match["heading"].strip(), match["body"])
        return f"<!-- from {match['source']}: {match['heading']} -->\n{expected_body(block, root)}<!-- end -->"
    return BLOCK.sub(replace, text)


def stale_blocks(text: str, root: Path) -> list[str]:
    """One line per block whose body differs from its committed section."""
    return [f'{block.source}: "{block.heading}" differs from the committed report'
            for block in find_blocks(text) if block.body != expected_body(block, root)]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    if len(paths) != 1:
        print("usage: python -m repro.report.readme_blocks README.md [--check]", file=sys.stderr)
        return 2
    path = Path(paths[0])
    try:
        text = path.read_text(encoding="utf-8")
        if check:
            stale = stale_blocks(text, path.parent)
            for line in stale:
                print(f"{path}: {line}", file=sys.stderr)
            return 1 if stale else 0
        updated = fill(text, path.parent)
    except OSError as error:
        print(f"cannot read {path}: {error.strerror or error}", file=sys.stderr)
        return 1
    except ReproError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    if updated != text:
        atomic_write_text(path, updated)
        print(f"updated {len(find_blocks(text))} block(s) in {path}")
    else:
        print(f"{path}: every block matches its committed report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
