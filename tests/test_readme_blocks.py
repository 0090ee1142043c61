"""README blocks copied from committed reports (repro.report.readme_blocks): the repository's README
matches its reports, and the tool copies, detects and refuses exactly as documented."""

from pathlib import Path

import pytest

from repro.errors import ReproError
from repro.report.readme_blocks import find_blocks, fill, group_body, main, project_root, section_body, stale_blocks

ROOT = Path(__file__).resolve().parents[1]

REPORT = """# A report

## Table 1

| a | b |
| --- | --- |
| 1 | 2 |

### Detail of table 1

![curve](figures/curve.png "a title") and [the runs](#runs), [torch](https://pytorch.org), [up](../other/x.md)

```
# a comment in code, not a heading
```

## Table 2

other
"""


def write_project(tmp_path: Path, body: str = "") -> Path:
    (tmp_path / "results" / "report").mkdir(parents=True)
    (tmp_path / "results" / "report" / "report.md").write_text(REPORT)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Readme\n\nintro\n\n<!-- from results/report/report.md: Table 1 -->\n{body}<!-- end -->\n\nafter\n")
    return readme


def test_the_readme_blocks_match_their_committed_reports():
    text = (ROOT / "README.md").read_text()
    assert find_blocks(text), "the README copies at least one committed table"
    assert stale_blocks(text, ROOT) == []


def test_a_section_runs_to_the_next_heading_of_its_level_and_keeps_deeper_ones():
    body = section_body(REPORT, "Table 1")
    assert body.startswith("| a | b |") and "### Detail of table 1" in body and "Table 2" not in body
    assert body.endswith("# a comment in code, not a heading\n```")  # a fenced "# ..." is not a heading
    assert section_body(REPORT, "Table 2") == "other"
    with pytest.raises(ReproError, match='no section "a comment in code, not a heading"'):
        section_body(REPORT, "a comment in code, not a heading")


GROUPED = """# A report

## Table 1

What every group shows.

**VGG-13 · CIFAR-10**

| a |
| --- |
| 1 |

- a note on CIFAR-10

**VGG-13 · CIFAR-10 (JPEG copy)**

| a |
| --- |
| 2 |

### Detail of table 1

**VGG-13 · CIFAR-10 (JPEG copy)**

a subsection's group: not part of the one above

## Table 2

**VGG-13 · CIFAR-10**

other
"""


def test_a_group_runs_from_its_label_to_the_next_label_or_the_section_end(tmp_path):
    table1 = section_body(GROUPED, "Table 1")
    assert group_body(table1, "VGG-13 · CIFAR-10") == "**VGG-13 · CIFAR-10**\n\n| a |\n| --- |\n| 1 |\n\n- a note on CIFAR-10"
    assert group_body(table1, "VGG-13 · CIFAR-10 (JPEG copy)") == "**VGG-13 · CIFAR-10 (JPEG copy)**\n\n| a |\n| --- |\n| 2 |"
    with pytest.raises(ReproError, match=r'no group "\*\*VGG-13 · CINIC-10\*\*"'):
        group_body(table1, "VGG-13 · CINIC-10")
    with pytest.raises(ReproError, match=r'the section has 2 groups "\*\*A\*\*"'):
        group_body("**A**\n\nx\n\n**A**\n\ny", "A")
    (tmp_path / "results" / "report").mkdir(parents=True)
    (tmp_path / "results" / "report" / "report.md").write_text(GROUPED)
    text = "<!-- from results/report/report.md: Table 1 | VGG-13 · CIFAR-10 (JPEG copy) -->\n<!-- end -->\n"
    filled = fill(text, tmp_path)
    assert filled == ("<!-- from results/report/report.md: Table 1 | VGG-13 · CIFAR-10 (JPEG copy) -->\n"
                      "**VGG-13 · CIFAR-10 (JPEG copy)**\n\n| a |\n| --- |\n| 2 |\n<!-- end -->\n")
    assert stale_blocks(filled, tmp_path) == []
    with pytest.raises(ReproError, match=r'README block from results/report/report.md: no group "\*\*CINIC\*\*"'):
        fill("<!-- from results/report/report.md: Table 2 | CINIC -->\n<!-- end -->\n", tmp_path)


def test_fill_copies_the_section_with_links_valid_from_the_readme(tmp_path):
    readme = write_project(tmp_path)
    filled = fill(readme.read_text(), tmp_path)
    assert '![curve](results/report/figures/curve.png "a title")' in filled
    assert "[the runs](results/report/report.md#runs)" in filled and "[torch](https://pytorch.org)" in filled
    assert "[up](results/other/x.md)" in filled
    assert filled.startswith("# Readme\n\nintro\n\n") and filled.endswith("<!-- end -->\n\nafter\n")
    assert stale_blocks(filled, tmp_path) == [] and fill(filled, tmp_path) == filled  # idempotent


def test_a_block_that_differs_from_its_report_is_named(tmp_path):
    readme = write_project(tmp_path, body="| a | b |\n| 1 | 3 |\n")
    assert stale_blocks(readme.read_text(), tmp_path) == ['results/report/report.md: "Table 1" differs from the committed report']
    assert main([str(readme), "--check"]) == 1
    assert main([str(readme)]) == 0 and main([str(readme), "--check"]) == 0


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "results" / "report" / "report.md").unlink(), "README block from results/report/report.md: cannot read it"),
    (lambda root: (root / "results" / "report" / "report.md").write_text("# other\n"),
     'README block from results/report/report.md: no section "Table 1" in the report'),
])
def test_a_missing_report_or_section_is_one_line_and_changes_nothing(tmp_path, capsys, damage, message):
    readme = write_project(tmp_path, body="kept\n")
    damage(tmp_path)
    before = readme.read_text()
    with pytest.raises(ReproError, match=message):
        fill(before, tmp_path)
    assert main([str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert readme.read_text() == before


@pytest.mark.parametrize("text, message", [
    # an end marker forgotten: the next block's markers must not swallow the prose in between
    ("<!-- from results/report/report.md: Table 1 -->\nold\n\nprose\n\n<!-- from results/report/report.md: Table 2 -->\nx\n<!-- end -->\n",
     "line 1: a README block marker without its pair"),
    ("text\n<!--from results/report/report.md: Table 1 -->\nx\n<!-- end -->\n", "line 2: a README block marker without its pair"),
    ("<!-- from ../outside/report.md: Table 1 -->\n<!-- end -->\n", "the report must lie under"),
    ("<!-- from results/report/report.md: Twice -->\n<!-- end -->\n", 'the report has 2 sections "Twice"'),
    ("<!-- from results/report/report.md: Marked -->\n<!-- end -->\n", 'section "Marked" contains a README block marker'),
])
def test_malformed_blocks_are_refused_and_the_file_is_kept(tmp_path, capsys, text, message):
    write_project(tmp_path)
    report = tmp_path / "results" / "report" / "report.md"
    report.write_text(REPORT + "\n## Twice\n\na\n\n## Twice\n\nb\n\n## Marked\n\n<!-- end -->\n")
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(ReproError, match=message):
        fill(text, tmp_path)
    assert main([str(readme)]) == 1 and main([str(readme), "--check"]) == 1
    assert capsys.readouterr().err.count("\n") == 2 and readme.read_text() == text


def test_a_readme_that_is_not_utf8_is_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_bytes(b"\xff\xfe not text")
    assert main([str(readme), "--check"]) == 1
    assert capsys.readouterr().err == f"{readme}: not UTF-8 text\n"


def test_a_page_in_a_subfolder_copies_from_the_project_with_links_valid_from_its_folder(tmp_path):
    """docs/*.md name their reports as ../results/...: the project root (pyproject.toml) bounds them, and the
    copied links are rewritten relative to docs/."""
    write_project(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text("# Results\n\n<!-- from ../results/report/report.md: Table 1 -->\n<!-- end -->\n")
    assert project_root(page) == tmp_path.resolve()
    assert main([str(page)]) == 0
    text = page.read_text()
    assert "![curve](../results/report/figures/curve.png \"a title\")" in text
    assert "[the runs](../results/report/report.md#runs)" in text and "[up](../results/other/x.md)" in text
    assert stale_blocks(text, tmp_path, page.parent) == [] and main([str(page), "--check"]) == 0
    outside = tmp_path / "docs" / "outside.md"
    outside.write_text("<!-- from ../../elsewhere/report.md: Table 1 -->\n<!-- end -->\n")
    assert main([str(page), str(outside), "--check"]) == 1  # one stale file fails the whole check
