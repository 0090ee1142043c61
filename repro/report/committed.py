"""A results folder's report from its committed files alone: what a clean clone of the repository renders.

A study commits its run folders' small files (never checkpoints or outputs.pt) and the report rendered from
them. Rendering in the working tree would also read cells still training or not yet committed, so the
committed report is rendered from the files of the last commit (git archive HEAD), extracted with the
same relative paths; a test (tests/test_committed_results.py) renders it again the same way and compares
every table. Commit the cells first, then render, then commit the report.

    python -m repro.report.committed results/gates/screen results/gates/report
    python -m repro.report.committed results/cpu results/cpu/report      # a grid's own report folder
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from repro import rundir
from repro.errors import ReproError
from repro.report import build_report

MARKDOWN = "report.md"


def _committed_copy(repo: Path, source: str, scratch: Path) -> None:
    """The files of `source` as the last commit holds them (not the working tree's edits), under `scratch`."""
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "--", source], cwd=repo, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        reason = getattr(error, "stderr", b"") or b""
        raise ReproError(f"cannot read the committed files under {source} in {repo}: "
                         f"{reason.decode(errors='replace').strip() or error}") from None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        # The "data" filter (Python 3.11.4+) refuses links and paths outside `scratch`; git archive has none.
        tar.extractall(scratch, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def _check_paths(repo: Path, source: str, out: Path) -> None:
    if Path(source).is_absolute() or ".." in Path(source).parts:
        raise ReproError(f"give the source folder relative to the repository root, without '..'; got {source}")
    source_path, out = (repo / source).resolve(), out.resolve()
    if out == source_path or out in source_path.parents:
        raise ReproError(f"the report folder {out} cannot be the source folder {source} or above it")
    # Inside the source folder is where a grid puts its report (OUTPUT/report), but never in a run.
    below_source = [out, *(folder for folder in out.parents if source_path in folder.parents)]
    if source_path in out.parents and any(rundir.is_run_dir(folder) for folder in below_source):
        raise ReproError(f"the report folder {out} lies in a run directory; give a folder of its own, e.g. {source}/report")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKDOWN).is_file())):
        raise ReproError(f"{out} exists and does not hold a report; choose another report folder")


def _unfinished(scratch: Path, source: str) -> list[str]:
    """Committed runs whose state is not "finished": how they show would depend on this machine."""
    states = sorted((scratch / source).rglob(rundir.STATE))
    return [str(state.parent.relative_to(scratch)) for state in states
            if json.loads(state.read_text()).get("status") != "finished"]


def render_committed(repo: Path, source: str, out: Path) -> Path:
    """Render the report of the committed runs under `source` (relative to `repo`) into `out`, which is
    replaced if it holds a report; returns its report.md."""
    repo, out = Path(repo), Path(out)
    _check_paths(repo, source, out)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        _committed_copy(repo, source, scratch)
        if not (scratch / source).is_dir():
            raise ReproError(f"the last commit holds no file under {source}")
        unfinished = _unfinished(scratch, source)
        if unfinished:
            raise ReproError(f"committed runs that are not finished: {', '.join(unfinished)}; commit only finished cells")
        here = os.getcwd()
        os.chdir(scratch)  # the report names its inputs as given: the same relative path as in the repository
        try:
            result = build_report([Path(source)], scratch / "report")
        finally:
            os.chdir(here)
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
        written = render_committed(repo, argv[0], Path(argv[1]))
    except (ReproError, OSError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {os.path.relpath(written)} from the committed files under {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
