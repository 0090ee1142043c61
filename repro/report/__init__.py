"""`repro report`: collect runs, aggregate seeds, and render Tables 1-2, figures and the reference numbers.

    from repro.report import build_report
    result = build_report(["runs/"], "reports/latest", references=["my-numbers.json"])
    result.markdown, result.html, result.figures, result.missing

Modules: references (the published numbers, package data), collect (runs -> groups of seeds, mean ± std),
tables (Tables 1-3 as data), figures (data -> matplotlib Figures), render (templates; writes the files).
"""

from __future__ import annotations

from pathlib import Path

from repro import rundir
from repro.errors import ReproError
from repro.report.collect import Collection, collect
from repro.report.figures import FIGURES
from repro.report.references import load_references
from repro.report.render import ReportResult, write_report

__all__ = ["build_report", "ReportResult", "DEFAULT_OUT"]

# Where `repro report` writes when no --out is given: one fixed folder, replaced by each new report.
DEFAULT_OUT = Path("reports") / "latest"
# The files whose presence makes a run reportable (a run with only config.json has nothing to show).
REPORTABLE = ("metrics", "eval", "timing", "sweep", "calibration")


def build_report(paths, out=DEFAULT_OUT, references=(), include_unfinished: bool = False) -> ReportResult:
    """Collect the runs under `paths` and write report.md (+ PNG figures) and report.html into `out`.

    Raises ReproError (one line) when the reference files are invalid, no run is found, or no run has
    anything to report; runs missing some results are reported with what they have, and the result's
    `missing` lists what they lack with the command that produces it.
    """
    sources = load_references(references)  # a bad --reference fails before any run is read
    collection = collect(paths, include_unfinished)
    _check_reportable(collection, paths)
    figures = {}
    for name, (_title, _caption, panels_of, draw) in FIGURES.items():
        panels = panels_of(collection)
        if panels:
            figures[name] = draw(panels)
    return write_report(Path(out), collection, sources, paths, figures)


def _check_reportable(collection: Collection, paths) -> None:
    where = ", ".join(str(path) for path in paths)
    if not collection.runs:
        first = collection.skipped[0]
        raise ReproError(f"no readable run in {where}: {first.run}: {first.why}")
    if not any(getattr(run, name) is not None for run in collection.runs for name in REPORTABLE):
        commands = "; ".join(f"`{run.command(rundir.EVAL)}`" for run in collection.runs[:3])
        raise ReproError(
            f"nothing to report in {where}: {len(collection.runs)} run(s) found but none has finished an epoch or been "
            f"evaluated; train them, then evaluate: {commands}"
        )
