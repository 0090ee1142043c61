"""`repro report [RUN_OR_FOLDER...] [--out reports/NAME] [--reference FILE ...]`: Tables 1-2, figures, references."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from repro.console import cli_errors, say


@cli_errors
def report(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(metavar="RUN_OR_FOLDER", help="Run directories, or folders to search for runs. [default: runs]", show_default=False),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Report folder (report.md, figures, report.html); replaced if it holds a report.")
    ] = Path("reports/latest"),
    reference: Annotated[
        list[Path] | None,
        typer.Option("--reference", "-r", help="Another reference-number file (the format of repro/report/references.json); repeatable."),
    ] = None,
    include_unfinished: Annotated[
        bool, typer.Option("--include-unfinished", help="Count interrupted, failed or running runs in the tables (they are marked either way).")
    ] = False,
):
    """Render the runs' results beside the reference numbers: report.md with PNG figures, and a self-contained report.html."""
    from repro.report import build_report

    result = build_report(paths or [Path("runs")], out, references=reference or [], include_unfinished=include_unfinished)
    say(f"Report of {result.runs} run(s) in {result.groups} group(s) written to [bold]{result.out}[/]: "
        f"{result.markdown.name}, {result.html.name} and {len(result.figures)} figure(s).")
    if result.missing:
        say(f"[yellow]{len(result.missing)} result(s) are missing[/] (dashes in the tables); to fill them:")
        for command in dict.fromkeys(item.command for item in result.missing):
            say(f"  {command}", markup=False)
    say(f"Open {result.html}", markup=False)
