"""`repro verify RUN...`: retrain each run's first epochs from its config.json and compare metrics.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from repro.console import cli_errors, console, say


@cli_errors
def verify(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Run directories, or folders of runs (e.g. results/cpu).",
                                               show_default=False)],
    epochs: Annotated[int, typer.Option(help="Epochs to retrain and compare", metavar="N")] = 2,
    data_dir: Annotated[Optional[str], typer.Option(help="Where the data sets are here, if not where the run found them", metavar="PATH")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda", metavar="NAME")] = "auto",
):
    """Regenerate committed numbers: retrain each run's first epochs from its config.json alone (in a
    temporary folder) and compare metrics.csv row by row, to 4 decimals."""
    from rich.table import Table

    from repro import rundir
    from repro.commands.progress import TrainingProgress, make_progress
    from repro.environment import select_device
    from repro.errors import ReproError
    from repro.verify import DECIMALS, verify_run

    resolved = str(select_device(device))
    failures = []
    for run in rundir.find_runs(runs):
        say(f"[bold]verifying[/] {run.path}: retraining {epochs} epoch(s) from its config.json")
        with make_progress() as bar:  # a retrain takes minutes: show it, one line per epoch as `repro train` does
            result = verify_run(run, epochs, data_dir, resolved, progress=TrainingProgress(bar))
        table = Table(title=f"{run.name}: first {epochs} epoch(s), trained on {result.environment}, retrained on {result.here}",
                      title_justify="left")
        for column in ("metrics.csv column", "largest difference", f"equal to {DECIMALS} decimals"):
            table.add_column(column, justify="left" if column.startswith("metrics") else "right")
        for check in result.columns:
            table.add_row(check.column, f"{check.largest_difference:.2e}", "yes" if check.equal else "[red]no[/]")
        console.print(table)
        if result.reproduced:
            say(f"[green]reproduced[/] {run.path}: every compared number agrees to {DECIMALS} decimals")
        else:
            differing = [check.column for check in result.columns if not check.equal]
            failures.append(run.path)
            say(f"[red]differs[/] {run.path}: {', '.join(differing)}. On the same kind of machine (CPU instruction set, "
                f"precision {result.precision}, thread count) training is deterministic; on another, bf16 and "
                f"multi-threaded reductions round differently, which moves the last digits and, over epochs, more.")
    if failures:
        raise ReproError(f"{len(failures)} run(s) did not reproduce to {DECIMALS} decimals: {', '.join(map(str, failures))}")
