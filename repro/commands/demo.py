"""`repro demo`: train every method on synthetic data, evaluate, time, sweep, calibrate and report, in one go."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from repro.console import cli_errors, console


@cli_errors
def demo(
    runs: Annotated[Path, typer.Option("--runs", help="Folder for the demo's run directories (replaced).")] = Path("runs/demo"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/demo"),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per method.")] = 4,
):
    """The whole pipeline on the embedded synthetic data set with a tiny VGG-13 (about 3 minutes on 2 CPU cores)."""
    from repro.demo import DemoConfig, run_demo

    start = time.perf_counter()
    result = run_demo(DemoConfig(runs=runs, out=out, epochs=epochs), log=lambda line: console.print(line, markup=False, highlight=False))
    report = result.report
    console.print(
        f"[green]done[/] in {time.perf_counter() - start:.0f} s: {len(result.runs)} runs in {runs}, "
        f"report in [bold]{report.out}[/] ({report.markdown.name}, {report.html.name}, {len(report.figures)} figures)",
        highlight=False,
    )
    console.print(f"Open {report.html}", markup=False, highlight=False)
