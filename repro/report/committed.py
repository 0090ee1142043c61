"""A results folder's report from its committed files alone: what a clean clone of the repository renders.

A study commits its run folders' small files (never checkpoints or outputs.pt) and the report rendered from
them. Rendering in the working tree would also read cells still training or not yet committed, so the
committed report is rendered from a copy of the files git tracks, with the same relative paths; a test
(tests/test_committed_results.py) renders it again the same way and compares every table.

    python -m repro.report.committed results/gates/screen results/gates/report
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from repro.errors import ReproError
from repro.report import build_report

MARKDOWN = "report.md"


def tracked_files(repo: Path, folder: str) -> list[str]:
    """Paths (relative to the repository) of the files git tracks under `folder`."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", folder], cwd=repo, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise ReproError(f"cannot list the files git tracks under {folder} in {repo}: {error}") from None
    return [name for name in listed.stdout.decode().split("\0") if name]


def render_committed(repo: Path, source: str, out: Path) -> Path:
    """Render the report of the tracked runs under `source` (relative to `repo`) into `out`; returns report.md."""
    files = tracked_files(repo, source)
    if not files:
        raise ReproError(f"git tracks no file under {source}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in files:
            target = Path(scratch) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, target)
        here = os.getcwd()
        os.chdir(scratch)  # the report names its inputs as given: the same relative path as in the repository
        try:
            result = build_report([Path(source)], Path(scratch) / "report")
        finally:
            os.chdir(here)
        out = Path(out)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(result.out, out)
    return out / MARKDOWN


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m repro.report.committed SOURCE_FOLDER REPORT_FOLDER (relative to the repository root)", file=sys.stderr)
        return 2
    repo = Path.cwd()
    try:
        written = render_committed(repo, argv[0], repo / argv[1])
    except ReproError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written.relative_to(repo)} from the committed files under {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
