"""`repro demo`: train every method on synthetic data, evaluate, time, sweep, calibrate and report, in one go."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from repro.console import cli_errors, say


@cli_errors
def demo(
    runs: Annotated[Path, typer.Option("--runs", help="Folder for the demo's run directories (replaced).")] = Path("runs/demo"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/demo"),
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Training epochs per method. [default: 6]")] = None,
    subset: Annotated[int | None, typer.Option("--subset", min=100, help="Synthetic training images (20% of them validate). [default: 4000]")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every run.")] = 0,
):
    """The whole pipeline on the embedded synthetic data set with a small VGG-13 (81-91 s on 2 idle CPU cores):
    train all five methods, evaluate and time them, sweep and calibrate thresholds, render the report."""
    from repro.demo import DemoConfig, run_demo

    start = time.perf_counter()
    config = DemoConfig(runs=runs, out=out, seed=seed)
    config.epochs = epochs or config.epochs
    config.subset = subset or config.subset
    result = run_demo(config, log=lambda line: say(line, markup=False))
    report = result.report
    say(f"[green]done[/] in {time.perf_counter() - start:.0f} s: {len(result.runs)} runs in {runs}, "
        f"report in [bold]{report.out}[/] ({report.markdown.name}, {report.html.name}, {len(report.figures)} figures)")
    say(f"Open {report.html}", markup=False)
