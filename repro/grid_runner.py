"""Running a grid's cells: skip what is done, resume what was interrupted, isolate failures, time alone.

Each cell is the same three steps a user would type (`repro train`, `repro eval`, `repro sweep`), called as
library functions on its run directory, so a grid's run directories are ordinary runs. What a cell needs is
decided from its files (`plan_cell`):

- done: state.json says finished, the config is the cell's, and every requested result is present and
  belongs to the run's checkpoint (with or without checkpoint.pt, so a committed results folder counts as
  done);
- resume: an unfinished run of the same config continues from last.pt;
- new: no run yet (or one that never finished an epoch and has nothing to resume from).

A run directory that holds a run with other options is an error for that cell, never overwritten. A cell
that fails is reported with its one-line error and the others go on.

Executors: `local` runs cells in this process one after another, or in N worker processes (`jobs`), the
CPU threads divided among them; `slurm` submits one job per cell (a job array) through submitit
(repro.slurm). Timing
(`repro eval --timing`) never runs beside other work: after all training, one cell at a time here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from repro import artifacts, rundir
from repro.errors import ReproError, error_reason
from repro.grid import Cell, Grid, Steps

# Config fields a finished run may hold differently from its cell and still be the cell's run.
FILLED_IN = ("data_dir", "num_classes", "in_channels", "image_size")


@dataclass
class CellPlan:
    cell: Cell
    train: str | None  # "new" | "resume" | None (no training: finished, or the cell cannot run, see error)
    steps: list[str]  # what runs: "train", "eval", "sweep", "fit-gates", "timing"
    note: str = ""  # e.g. "resume after epoch 3/30"
    error: str | None = None  # the cell cannot run (its folder holds another run)

    @property
    def done(self) -> bool:
        return not self.steps and self.error is None


@dataclass
class CellOutcome:
    name: str
    status: str  # "done" (nothing to do) | "ran" | "failed" | "interrupted" (a SLURM job stopped from outside)
    seconds: float = 0.0
    error: str | None = None
    steps: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # headline numbers: final exit, operating point, speed-up

    def then(self, later: "CellOutcome") -> "CellOutcome":
        """This outcome followed by a later step's (the timing after the training): steps and time add up."""
        if later.status == "done":
            return self
        status = next((s for s in ("failed", "interrupted") if s in (self.status, later.status)), "ran")
        return CellOutcome(self.name, status, self.seconds + later.seconds, self.error or later.error,
                           self.steps + later.steps, later.summary or self.summary)


# ---------------------------------------------------------------------------------------------- planning


def config_difference(cell: Cell, saved) -> list[str]:
    """How the run in a cell's folder differs from the cell (fields filled in at training are not counted;
    precision auto matches whatever it resolved to, so results from another machine still count)."""
    ignore = list(FILLED_IN)
    if cell.config.exits is None:
        ignore.append("exits")
    if cell.config.precision == "auto":
        ignore.append("precision")
    return saved.differences(cell.config, ignore=tuple(ignore))[:3]


def plan_cell(cell: Cell, steps: Steps) -> CellPlan:
    """What `cell` needs."""
    run = rundir.RunDir(cell.path)
    exits = cell.config.method != "baseline"
    wanted = (["eval"] * steps.eval + ["sweep"] * (steps.sweep is not None and exits)
              + ["fit-gates"] * (steps.fit_gates and exits) + ["timing"] * steps.timing)
    if not rundir.is_run_dir(cell.path):
        if cell.path.exists() and (not cell.path.is_dir() or any(cell.path.iterdir())):
            return CellPlan(cell, None, [], error=f"{cell.path} exists and is not a run directory; move it away")
        return CellPlan(cell, "new", ["train", *wanted], "new run")
    try:
        saved = artifacts.read_config(run)
        state = artifacts.read_state(run)
    except ReproError as error:
        return CellPlan(cell, None, [], error=str(error))
    differences = config_difference(cell, saved)
    if differences:
        return CellPlan(cell, None, [], error=f"{cell.path} holds a run with other options ({'; '.join(differences)}); "
                                                "remove it, or give the grid another output folder")
    status = state.current_status()
    if status == "running":
        return CellPlan(cell, None, [], error=f"{cell.path} is being trained by process {state.pid} on {state.host}; "
                                                f"if that process is gone, resume it with `repro train --resume {cell.path}`")
    if status != "finished":
        if run.has(rundir.LAST):
            return CellPlan(cell, "resume", ["train", *wanted], f"resume after epoch {state.epoch}/{state.epochs}")
        return CellPlan(cell, "new", ["train", *wanted], f"restart ({state.describe()}, nothing to resume from)")
    note = state.describe()
    if cell.config.precision == "auto":
        from repro.trainer import resolve_precision

        import torch

        here = resolve_precision("auto", torch.device("cpu"))
        if saved.precision != here:
            note += f"; trained in {saved.precision}, auto would be {here} on this machine's CPU"
    todo = [step for step in wanted if not _current(run, step, steps)]
    if "fit-gates" in todo and not _can_fit_gates(run):
        todo.remove("fit-gates")
        note += "; no exit policies fitted: neither checkpoint.pt nor outputs.pt is here (train it again to fit them)"
    return CellPlan(cell, None, todo, note)


def _current(run: rundir.RunDir, step: str, steps: Steps) -> bool:
    """Whether a step's result is present, readable and of the run's checkpoint (and, for a sweep, of the
    requested calibration target)."""
    readers = {"eval": artifacts.read_eval, "timing": artifacts.read_timing, "sweep": artifacts.read_sweep,
               "fit-gates": _read_fitted_policies}
    try:
        readers[step](run)
        if step == "sweep" and steps.sweep:
            return artifacts.read_calibration(run)["target"] == {k: float(v) for k, v in steps.sweep.items()}
    except ReproError:
        return False
    return True


def _read_fitted_policies(run: rundir.RunDir) -> None:
    """Both exit policies of `repro fit-gates` as the grid fits them (lambda DEFAULT_COST_WEIGHT, seed 0), fitted
    on this checkpoint's outputs and swept (ReproError if not). In a committed folder (no checkpoint.pt) the
    checkpoint is the one sweep.csv records, or else the one exit_policies.json itself records (then any
    well-formed policy file counts: nothing else is left to check it against)."""
    from repro.exit_policy import DEFAULT_COST_WEIGHT, POLICIES, criterion_name

    sha = artifacts.checkpoint_sha256(run) or artifacts.sweep_checkpoint(run) or _policies_checkpoint(run)
    wanted = {criterion_name(policy) for policy in POLICIES}
    swept = {row["criterion"] for row in artifacts.read_sweep(run)}
    fitted = artifacts.read_exit_policies(run, sha) if sha else {}
    as_the_grid_fits = {name for name, policy in fitted.items() if (policy.cost_weight, policy.seed) == (DEFAULT_COST_WEIGHT, 0)}
    if not wanted <= as_the_grid_fits or not wanted <= swept:
        raise ReproError(f"run {run.path} has no current exit policies")


def _policies_checkpoint(run: rundir.RunDir) -> str | None:
    try:
        recorded = rundir.read_json(run.file(rundir.EXIT_POLICIES)).get("checkpoint_sha256")
    except (ReproError, OSError, AttributeError):  # missing, damaged, or not an object: no checkpoint to tell
        return None
    return recorded if isinstance(recorded, str) else None


def _can_fit_gates(run: rundir.RunDir) -> bool:
    """fit-gates reads outputs.pt, which eval writes from checkpoint.pt: a committed folder keeps neither."""
    return run.has(rundir.OUTPUTS) or run.has(rundir.CHECKPOINT)


# ---------------------------------------------------------------------------------------------- one cell


def run_cell(cell: Cell, steps: Steps, device: str = "cpu", progress=None, threads: int | None = None) -> CellOutcome:
    """Train (or resume), evaluate and sweep one cell (timing is `time_cell`, run alone later). Errors
    become a failed outcome with the one-line message; Ctrl-C / SIGTERM propagate after the run is left
    resumable."""
    import torch

    from repro.environment import select_device
    from repro.exit_policy import DEFAULT_COST_WEIGHT, POLICIES
    from repro.steps import evaluate_run, fit_gates_run, sweep_run
    from repro.trainer import TrainingInterrupted, fit, resume_config

    if threads is not None:
        torch.set_num_threads(threads)
    device = str(select_device(device))  # here, where the cell runs (a SLURM job's node, not the login node)
    start = time.perf_counter()
    plan = plan_cell(cell, steps)
    if plan.error:
        return CellOutcome(cell.name, "failed", error=plan.error)
    todo = [step for step in plan.steps if step != "timing"]
    if not todo:
        return CellOutcome(cell.name, "done", summary=headline(cell))
    try:
        if plan.train is not None:
            config = cell.config
            if plan.train == "resume":  # the run's own config, with the data where the grid says it is now
                _, config = resume_config(cell.path, {"data_dir": cell.config.data_dir})
            fit(config, cell.path, resume=plan.train == "resume", overwrite=plan.train == "new", device=device, progress=progress)
        run = rundir.RunDir(cell.path)
        if "eval" in todo:
            evaluate_run(run, device=device)
        if "sweep" in todo:  # fit-gates, if it follows, replaces the policies and sweeps them: skip the old ones
            sweep_run(run, target=steps.sweep or None, fitted="fit-gates" not in todo)
        if "fit-gates" in todo:  # it sweeps again, keeping the calibration target
            fit_gates_run(run, list(POLICIES), DEFAULT_COST_WEIGHT, seed=0)
    except TrainingInterrupted:
        raise  # Ctrl-C or SIGTERM stops the grid, not just this cell; a rerun continues it
    except ReproError as error:
        return CellOutcome(cell.name, "failed", time.perf_counter() - start, str(error), todo)
    except Exception as error:  # a bug must not stop the other cells either; its type says where to look
        return CellOutcome(cell.name, "failed", time.perf_counter() - start, f"{type(error).__name__}: {error_reason(error)}", todo)
    return CellOutcome(cell.name, "ran", time.perf_counter() - start, steps=todo, summary=headline(cell))


def time_cell(cell: Cell, steps: Steps, device: str = "cpu") -> CellOutcome:
    """`repro eval --timing` of a cell that needs it (a "done" outcome when it does not)."""
    from repro.environment import select_device
    from repro.steps import time_run

    if "timing" not in plan_cell(cell, steps).steps:
        return CellOutcome(cell.name, "done")
    start = time.perf_counter()
    try:
        time_run(rundir.RunDir(cell.path), n_images=steps.timing_images, device=str(select_device(device)))
    except ReproError as error:
        return CellOutcome(cell.name, "failed", time.perf_counter() - start, str(error), ["timing"])
    except Exception as error:  # as in run_cell: one cell's bug is that cell's failure, not the grid's end
        return CellOutcome(cell.name, "failed", time.perf_counter() - start, f"{type(error).__name__}: {error_reason(error)}", ["timing"])
    return CellOutcome(cell.name, "ran", time.perf_counter() - start, steps=["timing"], summary=headline(cell))


def run_cell_job(cell: Cell, steps: Steps, device: str, threads: int | None, timing: bool = False) -> CellOutcome:
    """The function a worker process or a SLURM job runs (top level, so it pickles). A SLURM job also times
    its cell (`timing`): it has its node to itself, while a local worker shares the machine."""
    outcome = run_cell(cell, steps, device, None, threads)
    if timing and outcome.status != "failed":
        outcome = outcome.then(time_cell(cell, steps, device))
    return outcome


def headline(cell: Cell) -> dict:
    """The numbers the closing table shows, from the cell's eval.json and timing.json when present."""
    run = rundir.RunDir(cell.path)
    numbers = {}
    try:
        state = artifacts.read_state(run)
        numbers["state"] = state.describe()
        evaluation = artifacts.read_eval(run)
        numbers["final"] = evaluation["test"]["final_accuracy"]
        numbers["early_exit"] = evaluation["operating_point"]["test"]["accuracy"]
        numbers["macs_speedup"] = evaluation["operating_point"]["test"]["macs_speedup"]
        if run.has(rundir.TIMING):
            numbers["measured_speedup"] = artifacts.read_timing(run)["measured_speedup"]["batch1"]
    except ReproError:
        pass
    return numbers


# ---------------------------------------------------------------------------------------------- executors


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of `jobs` concurrent training processes, so that together they do not
    oversubscribe the cores (oversubscribed intra-op threads wait on each other at every barrier)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def run_local_parallel(cells: list[Cell], steps: Steps, device: str, jobs: int, on_done) -> list[CellOutcome]:
    """Cells in `jobs` worker processes (spawned: no forked torch state); `on_done(outcome)` as each ends."""
    import concurrent.futures
    import multiprocessing

    from concurrent.futures.process import BrokenProcessPool

    outcomes = []
    threads = threads_per_job(jobs)
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell_job, cell, steps, device, threads): cell for cell in cells}
        try:
            for future in concurrent.futures.as_completed(futures):
                try:
                    outcome = future.result()
                except BrokenProcessPool:  # a worker was killed (out of memory, a signal): its cell and the queued ones
                    outcome = CellOutcome(futures[future].name, "failed",
                                          error="its worker process died (killed, or out of memory); run the grid again to resume it")
                outcomes.append(outcome)
                on_done(outcome)
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)  # the workers got the signal too and saved their runs
            raise
    return outcomes


def grid_summary_rows(grid: Grid, outcomes: dict[str, CellOutcome]) -> list[dict]:
    rows = []
    for cell in grid.cells:
        outcome = outcomes.get(cell.name)
        if outcome is None:
            continue
        rows.append({"cell": cell.name, "status": outcome.status, "seconds": outcome.seconds,
                     "steps": outcome.steps, "error": outcome.error, **outcome.summary})
    return rows
