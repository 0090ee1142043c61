"""`repro sweep RUN [RUN...]`: threshold sweeps, Pareto fronts and calibration from stored outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from repro.console import cli_errors, console, say

# Pareto points shown per criterion on the terminal; sweep.csv has them all.
MAX_ROWS = 12


@cli_errors
def sweep(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Run directories, or folders to search for runs.", show_default=False)],
    criterion: Annotated[str, typer.Option("--criterion", "-c", help="entropy, maxprob, gate, or all that apply.")] = "all",
    thresholds: Annotated[
        int | None,
        typer.Option("--thresholds", help="Number of thresholds: the range ends plus quantiles of the val scores. [default: 201]"),
    ] = None,
    threshold_list: Annotated[
        str | None, typer.Option("--threshold-list", help="Explicit thresholds shared by all exits, e.g. '0.1,0.2'.")
    ] = None,
    per_exit: Annotated[
        str | None, typer.Option("--per-exit", help="Per-exit threshold vectors (one per early exit), ';' between vectors.")
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option("--max-drop", help="Calibrate: cheapest val point within D accuracy points of the final exit.")
    ] = None,
    budget: Annotated[
        float | None, typer.Option("--budget", help="Calibrate: most accurate val point with mean MACs <= F x the plain network's.")
    ] = None,
):
    """Sweep exit thresholds over val and test from RUN/outputs.pt; write sweep.csv (and calibration.json)."""
    from repro import rundir, steps
    from repro.errors import ReproError, check_name
    from repro.sweep import CRITERION_CHOICES, NoEarlyExits, check_target

    # Usage errors first, before any run is read.
    check_name("criterion", criterion, CRITERION_CHOICES)
    target = check_target(max_drop, budget)
    if thresholds is not None and (threshold_list is not None or per_exit is not None):
        raise ReproError("give --thresholds (a count) or explicit --threshold-list / --per-exit values, not both")
    explicit = parse_thresholds(threshold_list, per_exit)
    found = rundir.find_runs(runs)
    for run in found:
        try:
            result = steps.sweep_run(run, criterion, thresholds, explicit, target)
        except NoEarlyExits as error:
            if len(found) == 1:
                raise
            # In a folder of runs, a baseline (no early exits) is skipped, not fatal.
            say(f"[yellow]skipped {run.path}:[/] {error}")
            continue
        console.print(summary_table(run.name, result))
        written = [rundir.SWEEP, rundir.SWEEP_SOURCE] + ([rundir.CALIBRATION] if result.calibration is not None else [])
        say(f"wrote {', '.join(str(run.file(name)) for name in written)}")


def parse_thresholds(threshold_list: str | None, per_exit: str | None) -> list | None:
    """--threshold-list '0.1,0.2' (shared by every exit) or --per-exit '0.1,0.2,...;0.3,...' (one vector per
    point, one threshold per early exit) -> a list of numbers or of vectors; None when neither is given.
    Counts and ranges are checked against the run (repro.sweep.threshold_matrix)."""
    from repro.errors import ReproError
    from repro.parsing import number_list

    if threshold_list is not None and per_exit is not None:
        raise ReproError("give --threshold-list or --per-exit, not both")
    if threshold_list is not None:
        values = number_list(threshold_list, "--threshold-list")
        if not values:
            raise ReproError("--threshold-list is empty")
        return values
    if per_exit is not None:
        vectors = [number_list(part, "--per-exit") for part in per_exit.split(";") if part.strip()]
        if not vectors or not all(vectors):
            raise ReproError("--per-exit is empty; give vectors like '0.1,0.2,...;0.3,0.4,...'")
        if len({len(v) for v in vectors}) > 1:
            raise ReproError(f"--per-exit vectors differ in length ({', '.join(str(len(v)) for v in vectors)}); give one threshold per early exit in each")
        return vectors
    return None


def summary_table(name: str, result):
    """The val Pareto points of every criterion (with test beside them) and the calibrated point."""
    from rich.table import Table

    from repro.sweep import describe_target, format_threshold

    table = Table(
        title=f"{name}: Pareto points on val, evaluated on test",
        caption=f"final exit: {result.final_accuracy['val']:.2%} val, {result.final_accuracy['test']:.2%} test",
    )
    for column in ("criterion", "threshold", "val acc", "val speed-up", "test acc", "test speed-up"):
        table.add_column(column, justify="left" if column in ("criterion", "threshold") else "right")
    for (split, criterion), points in result.points.items():
        if split != "val":
            continue
        test = result.points[("test", criterion)]
        front = result.pareto[(split, criterion)].nonzero().flatten().tolist()
        front.sort(key=lambda t: points.mean_macs[t].item())
        if len(front) > MAX_ROWS:  # thin evenly, keeping both ends of the front
            front = [front[round(i * (len(front) - 1) / (MAX_ROWS - 1))] for i in range(MAX_ROWS)]
        for t in front:
            table.add_row(
                criterion,
                _threshold_text(format_threshold(points.thresholds[t])),
                f"{points.accuracy[t].item():.2%}",
                f"{points.macs_speedup[t].item():.2f}x",
                f"{test.accuracy[t].item():.2%}",
                f"{test.macs_speedup[t].item():.2f}x",
            )
    calibration = result.calibration
    if calibration is not None:
        table.add_section()
        table.add_row(
            f"[bold]{calibration.criterion}[/]",
            _threshold_text(format_threshold(calibration.thresholds)),
            f"[bold]{calibration.val['accuracy']:.2%}[/]",
            f"[bold]{calibration.val['macs_speedup']:.2f}x[/]",
            f"[bold]{calibration.test['accuracy']:.2%}[/]",
            f"[bold]{calibration.test['macs_speedup']:.2f}x[/]",
        )
        table.add_row("", f"[dim]{describe_target(calibration.target)}[/]", "", "", "", "")
    return table


def _threshold_text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
