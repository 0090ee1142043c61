"""Every committed report under results/ is what its committed run files render (issue 15): the same
numbers in every table, only the "Generated ..." line may differ. No training: rendering only, a few
seconds per report. Needs a git checkout (skipped in an unpacked source archive)."""
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from repro.errors import ReproError
from repro.report.committed import render_committed

REPO = Path(__file__).resolve().parents[1]
REPORTS = sorted(REPO.glob("results/**/report/report.md"))
needs_git = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                               reason="not a git checkout: the committed files cannot be told apart")


def _source(report_md: Path) -> str:
    """The folder the report was rendered from, as its header names it."""
    found = re.search(r"found under: `([^`]+)`", report_md.read_text())
    assert found, f"{report_md} does not name the folder it was rendered from"
    return found.group(1)


def _tables(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if not line.startswith("Generated ")]


@needs_git
@pytest.mark.parametrize("report_md", REPORTS, ids=[str(p.relative_to(REPO).parent) for p in REPORTS])
def test_committed_report_rerenders_from_the_committed_files(report_md, tmp_path):
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(report_md.relative_to(REPO))], cwd=REPO,
                             capture_output=True)
    if tracked.returncode:
        pytest.skip(f"{report_md.relative_to(REPO)} is not committed yet")
    again = render_committed(REPO, _source(report_md), tmp_path / "report")
    assert _tables(again.read_text()) == _tables(report_md.read_text()), (
        f"{report_md.relative_to(REPO)} differs from what its committed runs render: "
        f"python -m repro.report.committed {_source(report_md)} {report_md.parent.relative_to(REPO)}")


def test_render_committed_reads_only_what_git_tracks(tmp_path):
    """A cell still training (untracked) is not in the committed report."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    source = REPO / "results" / "gates" / "screen" / "bnet"
    if not (source / "eval.json").is_file():
        pytest.skip("no committed screening cell to copy")
    study = repo / "results" / "study"
    for cell in ("cell-kept", "cell-in-training"):
        shutil.copytree(source, study / cell, ignore=shutil.ignore_patterns("*.pt"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "results/study/cell-kept"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "one finished cell"], cwd=repo, check=True)
    (study / "cell-kept" / "train.log").write_text("edited after the commit\n")  # the commit counts, not the edit
    markdown = render_committed(repo, "results/study", tmp_path / "out").read_text()
    assert "found under: `results/study`" in markdown
    assert "1 run(s)" in markdown and "cell-kept" in markdown and "cell-in-training" not in markdown
    # The report folder never replaces the source folder, one above it, a run, or a folder that holds no report.
    for out in (study, repo / "results"):
        with pytest.raises(ReproError, match="cannot be the source folder"):
            render_committed(repo, "results/study", out)
    for out in (study / "cell-kept", study / "cell-kept" / "report"):
        with pytest.raises(ReproError, match="lies in a run directory"):
            render_committed(repo, "results/study", out)
    assert sorted(p.name for p in (study / "cell-kept").iterdir()) == sorted(p.name for p in (study / "cell-in-training").iterdir())
    # A grid's own report folder, inside the source folder, is rendered like any other.
    inside = render_committed(repo, "results/study", study / "report").read_text()
    assert inside.split("\n", 3)[3] == markdown.split("\n", 3)[3]  # all but the "Generated ..." line
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ReproError, match="does not hold a report"):
        render_committed(repo, "results/study", tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(ReproError, match="relative to the repository root"):
        render_committed(repo, str(study), tmp_path / "out")


ROW_LABEL_MAX = 60  # a label a table row can carry without wrapping; the legend ("Row labels") has the options


def _row_labels(markdown: str) -> list[str]:
    """The first cell of every table body row, markdown escapes undone (the Runs table lists folders: not labels)."""
    text = markdown.split("\n## Runs", 1)[0]
    labels = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| :") and not line.startswith("| ---"):
            labels.append(re.sub(r"\\(.)", r"\1", line[2:].split(" | ", 1)[0]))
    return labels


@pytest.mark.parametrize("report_md", REPORTS, ids=[str(p.relative_to(REPO).parent) for p in REPORTS])
def test_committed_report_row_labels_are_short(report_md):
    long = [label for label in _row_labels(report_md.read_text()) if len(label) > ROW_LABEL_MAX]
    assert long == [], f"{report_md.relative_to(REPO)}: row labels over {ROW_LABEL_MAX} characters"


def test_the_row_label_check_reads_table_cells_and_skips_the_runs_table():
    markdown = ("| Method | n |\n| :--- | ---: |\n| proposed \\[x\\] | 1 |\n\n## Runs\n\n| " + "r" * 80 + " | 1 |\n")
    assert _row_labels(markdown) == ["Method", "proposed [x]"]


@needs_git
def test_the_fair_verdict_is_what_its_script_prints_from_the_committed_cells(tmp_path):
    """results/fair/verdict.md applies the study's decision rule; a cell committed later must change it in the
    same commit (python results/fair/verdict.py > results/fair/verdict.md)."""
    verdict = REPO / "results" / "fair" / "verdict.md"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "results/fair/verdict.md"], cwd=REPO, capture_output=True)
    if tracked.returncode:
        pytest.skip("results/fair/verdict.md is not committed yet")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "--", "results"], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp_path, filter="data")
    printed = subprocess.run([sys.executable, str(tmp_path / "results" / "fair" / "verdict.py")], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == verdict.read_text().strip(), \
        "results/fair/verdict.md differs from what verdict.py prints: python results/fair/verdict.py > results/fair/verdict.md"
