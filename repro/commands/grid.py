"""`repro grid GRID`: run a whole grid of training runs (and their eval, sweep, timing), resumably.

Thin: repro.grid reads the file and expands the cells, repro.grid_runner decides and runs what each needs;
this command shows progress, the closing table, and renders the report.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Annotated, Optional

import typer

from repro.console import cli_errors, console, say

SLURM = "SLURM (--executor slurm)"


@cli_errors
def grid(
    source: Annotated[Optional[str], typer.Argument(metavar="GRID", help="A grid TOML file, or a preset's name (--list shows them)",
                                                    show_default=False)] = None,
    list_presets: Annotated[bool, typer.Option("--list", help="List the shipped presets with their cell counts, and exit")] = False,
    executor: Annotated[str, typer.Option(help="local (this machine) | slurm (a job per cell, through submitit)", metavar="NAME")] = "local",
    jobs: Annotated[Optional[int], typer.Option(help="Cells trained at once: local worker processes sharing the CPU threads [default: 1], or the most SLURM jobs running at once [default: no limit]", metavar="N")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the cells and what each would run, and exit")] = False,
    only: Annotated[Optional[str], typer.Option(help="Only the cells whose names match this glob, e.g. 'vgg13-bnet-*'", metavar="GLOB")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a shared option: KEY=VALUE (repeatable), e.g. data_dir=../shared/data",
                                                      metavar="KEY=VALUE")] = None,
    report: Annotated[Optional[bool], typer.Option("--report/--no-report", help="Render the report into OUTPUT/report at the end [default: the grid file's `report`]")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda", metavar="NAME")] = "auto",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="slurm: wait for the jobs, or submit and return (a later run collects)")] = True,
    partition: Annotated[Optional[str], typer.Option(help="SLURM partition", rich_help_panel=SLURM)] = None,
    gpus_per_job: Annotated[Optional[int], typer.Option(help="GPUs per job", rich_help_panel=SLURM, metavar="N")] = None,
    cpus_per_job: Annotated[Optional[int], typer.Option(help="CPUs per job", rich_help_panel=SLURM, metavar="N")] = None,
    time_limit: Annotated[Optional[int], typer.Option("--time", help="Time limit per job, in minutes [default: 120]", rich_help_panel=SLURM, metavar="MIN")] = None,
    mem: Annotated[Optional[float], typer.Option(help="Memory per job, in GB", rich_help_panel=SLURM, metavar="GB")] = None,
):
    """Train, evaluate, sweep and time every cell of a grid (models x datasets x methods x seeds x options);
    finished cells are skipped, interrupted ones resumed, and a failed cell does not stop the others."""
    from repro.environment import select_device
    from repro.errors import ReproError, check_name
    from repro.grid import list_presets as presets, load_grid, select
    from repro.grid_runner import plan_cell

    if list_presets:
        console.print(preset_table(presets()))
        return
    if source is None:
        raise ReproError("give a grid file or a preset's name; `repro grid --list` shows the presets", exit_code=2)
    check_name("executor", executor, ("local", "slurm"))
    if jobs is not None and jobs < 1:
        raise ReproError(f"--jobs must be at least 1, got {jobs}")
    grid_spec = load_grid(source, overrides=parse_sets(set_ or []))
    cells = select(grid_spec.cells, only)
    plans = [plan_cell(cell, grid_spec.steps) for cell in cells]
    if dry_run:
        console.print(plan_table(grid_spec, plans))
        return
    start = time.perf_counter()
    try:
        with stop_on_sigterm():
            if executor == "slurm":
                # The device is chosen where each job runs (a GPU node), not here on the submitting host.
                parameters = {"partition": partition, "gpus_per_job": gpus_per_job, "cpus_per_job": cpus_per_job,
                              "time": time_limit, "mem": mem}
                outcomes = run_on_slurm(grid_spec, plans, device,
                                        {**grid_spec.slurm, **{k: v for k, v in parameters.items() if v is not None}}, jobs, wait)
                if outcomes is None:
                    return
            else:
                outcomes = run_locally(grid_spec, plans, str(select_device(device)), jobs or 1)
    except KeyboardInterrupt:
        raise ReproError("interrupted; every run is left resumable: run the same `repro grid` command again to continue "
                         "(finished cells are skipped, interrupted ones resumed)", 130) from None
    except ReproError as error:
        if error.exit_code in (130, 143):  # a cell's training was stopped by Ctrl-C or SIGTERM
            raise ReproError("interrupted during a cell's training, which is left resumable: run the same `repro grid` "
                             "command again to continue (finished cells are skipped, interrupted ones resumed)", error.exit_code) from None
        raise
    console.print(outcome_table(grid_spec, outcomes, time.perf_counter() - start))
    failed = [o for o in outcomes.values() if o.status == "failed"]
    interrupted = [o for o in outcomes.values() if o.status == "interrupted"]
    if (grid_spec.report if report is None else report) and any(o.status in ("done", "ran") for o in outcomes.values()):
        render_report(grid_spec)
    if failed:
        also = f" and {len(interrupted)} interrupted" if interrupted else ""
        raise ReproError(f"{len(failed)} of {len(outcomes)} cell(s) failed{also} (their errors are in the table above); "
                         f"fix the cause and run the same command again: finished cells are skipped")
    if interrupted:
        raise ReproError(f"{len(interrupted)} of {len(outcomes)} cell(s) interrupted by SLURM (time limit, preemption or "
                         f"scancel), each left resumable: run the same command again to resume them")


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (a cluster's time limit, `kill`) stops the grid like Ctrl-C, so it ends with the same message
    and its files written whole (training has its own handler, which this one surrounds)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_sets(items: list[str]) -> dict:
    from repro.config import option_field, parse_value
    from repro.parsing import key_value

    values = {}
    for item in items:
        key, text = key_value(item, "--set")
        option_field(key)  # an unknown key is a usage error listing the valid ones
        values[key] = parse_value(key, text)
    return values


def run_locally(grid_spec, plans, device: str, jobs: int) -> dict:
    """Training (in this process, or in `jobs` workers), then timing one cell at a time here."""
    from repro.commands.progress import TrainingProgress, make_progress
    from repro.grid_runner import CellOutcome, run_cell, run_local_parallel, time_cell

    outcomes: dict[str, CellOutcome] = {}
    steps = grid_spec.steps
    with make_progress() as bar:
        overall = bar.add_task(f"grid {grid_spec.name}", total=len(plans), info="cells", unit="cell")

        def done(outcome: CellOutcome) -> None:
            outcomes[outcome.name] = outcome
            bar.advance(overall)
            say(outcome_line(outcome), out=bar.console)

        for plan in plans:
            if plan.error:
                done(CellOutcome(plan.cell.name, "failed", error=plan.error))
        runnable = [plan.cell for plan in plans if not plan.error]
        if jobs > 1:
            run_local_parallel(runnable, steps, device, jobs, done)
        else:
            for cell in runnable:
                progress = TrainingProgress(bar)
                try:
                    done(run_cell(cell, steps, device, progress))
                finally:
                    progress.close()
        if steps.timing:  # alone, after all training: a latency must not measure contention
            timing_task = bar.add_task("timing", total=len(runnable), info="cells", unit="cell")
            for cell in runnable:
                if outcomes[cell.name].status != "failed":
                    timed = time_cell(cell, steps, device)
                    if timed.status != "done":
                        outcomes[cell.name] = outcomes[cell.name].then(timed)
                        say(outcome_line(outcomes[cell.name]), out=bar.console)
                bar.advance(timing_task)
    return outcomes


def run_on_slurm(grid_spec, plans, device: str, options: dict, jobs: int, wait: bool) -> dict | None:
    """Submit the cells that need work as a job array; wait (with progress) or return at once."""
    from repro.commands.progress import make_progress
    from repro.slurm import JobWatch, collect_job, make_executor, save_job_ids, slurm_parameters, slurm_work, submit_cells

    folder = grid_spec.output / ".submitit"
    watch = JobWatch(say=say)
    outcomes, pending, cells_to_submit = slurm_work(plans, grid_spec.steps, folder, watch)
    if cells_to_submit:
        executor = make_executor(folder, slurm_parameters(options), jobs=jobs, exclusive=grid_spec.steps.timing)
        submitted = submit_cells(executor, cells_to_submit, grid_spec.steps, device)
        save_job_ids(folder, submitted, cells_to_submit)
        watch.follow(submitted)
        pending.update({cell.name: (job, cell) for job, cell in zip(submitted, cells_to_submit)})
        say(f"submitted {len(submitted)} job(s); logs in {folder}")
    if not wait:
        say("not waiting: run the same `repro grid` command again to collect them")
        return None
    with make_progress() as bar:
        overall = bar.add_task(f"grid {grid_spec.name}", total=len(pending), info="jobs", unit="job")
        while pending:
            for name, (job, cell) in list(pending.items()):
                ended = watch.ended(job)
                if ended is not None:
                    outcomes[name] = collect_job(job, cell, ended)
                    say(outcome_line(outcomes[name]), out=bar.console)
                    bar.advance(overall)
                    del pending[name]
            time.sleep(1.0)
    return outcomes


def render_report(grid_spec) -> None:
    from repro.report import build_report

    result = build_report([grid_spec.output], grid_spec.output / "report")
    say(f"report written to {result.out} ({result.markdown.name}, {result.html.name})")


# ---------------------------------------------------------------------------------------------- tables


def preset_table(names: list[str]):
    from rich.table import Table

    from repro.grid import load_grid

    table = Table(title="grid presets (repro grid NAME)")
    for column in ("preset", "cells", "output", "what it is for"):
        table.add_column(column, overflow="fold" if column == "what it is for" else "ellipsis")
    for name in names:
        spec = load_grid(name)
        table.add_row(name, str(len(spec.cells)), str(spec.output), spec.description)
    return table


def plan_table(grid_spec, plans):
    from rich.table import Table

    table = Table(title=f"grid {grid_spec.name} ({grid_spec.source}): {len(plans)} cell(s) -> {grid_spec.output}", title_justify="left")
    for column in ("cell", "would run", "note"):
        table.add_column(column, no_wrap=column == "cell")
    for plan in plans:
        if plan.error:
            table.add_row(plan.cell.name, "[red]nothing (error)[/]", plan.error)
        elif plan.done:
            table.add_row(plan.cell.name, "nothing: done", plan.note)
        else:
            table.add_row(plan.cell.name, ", ".join(plan.steps), plan.note)
    return table


def outcome_line(outcome) -> str:
    if outcome.status == "failed":
        return f"[red]failed[/] {outcome.name}: {outcome.error}"
    if outcome.status == "interrupted":
        return f"[yellow]interrupted[/] {outcome.name}: {outcome.error}"
    if outcome.status == "done":
        return f"[dim]done[/] {outcome.name}: nothing to do"
    return f"[green]ran[/] {outcome.name}: {', '.join(outcome.steps)} in {format_seconds(outcome.seconds)}"


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def outcome_table(grid_spec, outcomes: dict, seconds: float):
    from rich.table import Table

    table = Table(title=f"grid {grid_spec.name}: {len(outcomes)} cell(s) in {format_seconds(seconds)}", title_justify="left")
    for column in ("cell", "status", "time", "run", "final exit", "early exit", "MAC speed-up", "measured"):
        table.add_column(column, justify="left" if column in ("cell", "status", "run") else "right", no_wrap=column == "cell")
    for cell in grid_spec.cells:
        outcome = outcomes.get(cell.name)
        if outcome is None:
            continue
        numbers = outcome.summary
        status = {"failed": "[red]failed[/]", "interrupted": "[yellow]interrupted[/]", "done": "done", "ran": "[green]ran[/]"}.get(outcome.status, outcome.status)
        table.add_row(
            cell.name, status, format_seconds(outcome.seconds) if outcome.seconds else "",
            outcome.error if outcome.error else numbers.get("state", ""),
            _percent(numbers.get("final")), _percent(numbers.get("early_exit")),
            _ratio(numbers.get("macs_speedup")), _ratio(numbers.get("measured_speedup")),
        )
    return table


def _percent(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else ""


def _ratio(value) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else ""
