"""`repro grid --executor slurm`: one job per cell, submitted as a job array through submitit, followed to
its end, collected into the same outcomes the local executor gives.

What a job runs (`run_slurm_job`) is the local cell (train or resume, eval, sweep, timing on a node of its
own). SLURM stops a job from outside in three ways: a warning signal before its time limit (submitit asks
for one 90 s before: SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise), SIGTERM at the limit, on
preemption and on `scancel`, and SIGKILL a grace period (KillWait) later. The first two stop the cell as
Ctrl-C does: training leaves a resumable run and the job returns an "interrupted" outcome. (submitit's own
handlers would requeue a checkpointable function or ignore SIGTERM; a cell resumes from its files instead,
on the next `repro grid`.) Jobs are submitted with --no-requeue: SLURM never starts a second trainer of a
cell that `repro grid` already planned again.

Following jobs: submitit asks `sacct`, and on a cluster without accounting (no slurmdbd) sacct fails, so
submitit never learns that a job ended without a result. `JobWatch` asks `squeue` then, once a poll for all
jobs: squeue shows an ended job's state for MinJobAge seconds (300 by default) and forgets it after, and a
job it does not list has ended too. A job that ended without its result pickle is given RESULT_GRACE
seconds for the pickle to appear (a shared file system can show it late) before it counts as ended
without one.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path

from repro import rundir
from repro.errors import ReproError, error_reason
from repro.grid import Cell, Steps
from repro.grid_runner import CellOutcome, CellPlan, plan_cell, run_cell_job

# squeue's and sacct's states of a job that will not run again (https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES;
# PREEMPTED and NODE_FAIL are final because jobs are submitted with --no-requeue); those of STOPPED_FROM_OUTSIDE
# leave the cell resumable, the rest are its failure.
ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT", "GONE"}
STOPPED_FROM_OUTSIDE = {"TIMEOUT", "CANCELLED", "NODE_FAIL", "PREEMPTED", "DEADLINE", "BOOT_FAIL"}


# Minutes per job when neither --time nor the grid's [slurm] table says: submitit's own default (5) would stop
# every real cell; two hours hold a paper cell on a GPU with room, and an interrupted cell resumes anyway.
DEFAULT_TIME = 120

# Seconds an ended job's result pickle may take to appear where this process reads it (submitit waits as long).
RESULT_GRACE = 15.0


def slurm_parameters(options: dict) -> dict:
    """sbatch parameters (submitit's SLURM names) from the grid's [slurm] table and the command line, None
    meaning not set: partition, gpus_per_job -> gpus_per_node, cpus_per_job -> cpus_per_task, time (minutes,
    DEFAULT_TIME unless given), mem (GB -> "16GB")."""
    names = {"partition": "partition", "gpus_per_job": "gpus_per_node", "cpus_per_job": "cpus_per_task", "time": "time",
             "mem": "mem"}
    parameters = {"time": DEFAULT_TIME} | {names[key]: value for key, value in options.items() if value is not None}
    if "mem" in parameters:
        mem = float(parameters["mem"])
        parameters["mem"] = f"{int(mem)}GB" if mem == int(mem) else f"{int(mem * 1024)}MB"
    return parameters


def submitit_module():
    try:
        import submitit
    except ImportError:
        raise ReproError("--executor slurm needs submitit: pip install \".[cluster]\" (or pip install submitit)") from None
    return submitit


def make_executor(folder: Path, parameters: dict, cluster: str | None = None, jobs: int | None = None, exclusive: bool = False):
    """A submitit executor writing its pickles and logs to `folder` (inside the grid's output). cluster
    None = SLURM; "local" runs real jobs as local processes."""
    submitit = submitit_module()
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as error:  # submitit could not find srun / sbatch
        raise ReproError(f"no SLURM cluster here ({error_reason(error)}); use --executor local") from None
    executor.update_parameters(name="repro-grid")
    if cluster != "local":
        executor.update_parameters(**{f"slurm_{key}": value for key, value in parameters.items()})
        # A requeued job would train a cell that `repro grid` may already have submitted again (see module doc).
        executor.update_parameters(slurm_additional_parameters={"no_requeue": True})
        if jobs is not None:
            executor.update_parameters(slurm_array_parallelism=jobs)
        if exclusive:  # a job that times its cell must have its node to itself, or latency measures its neighbours
            executor.update_parameters(slurm_exclusive=True)
    return executor


def run_slurm_job(cell: Cell, steps: Steps, device: str, timing: bool) -> CellOutcome:
    """What a SLURM job runs: the cell, with SLURM's stop signals turned into an "interrupted" outcome (see
    the module's docstring). Training installs its own SIGTERM handler, which saves the run; the time-limit
    warning is passed on to it as SIGTERM, and outside training SIGTERM stops evaluation or timing, which
    rerun whole."""
    from submitit.core.job_environment import JobEnvironment

    from repro.trainer import TrainingInterrupted

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(JobEnvironment._usr_sig(), lambda signum, frame: signal.raise_signal(signal.SIGTERM))
    try:
        return run_cell_job(cell, steps, device, None, timing)
    except TrainingInterrupted as error:
        reason = str(error).split(";")[0]  # "SIGTERM: run X interrupted at epoch 3/30"
        return CellOutcome(cell.name, "interrupted", error=f"stopped by SLURM ({reason}); resumes on the next run")
    except KeyboardInterrupt:
        return CellOutcome(cell.name, "interrupted", error="stopped by SLURM outside training (before it began, or "
                                                           "in evaluation or timing); resumes on the next run")


def submit_cells(executor, cells: list[Cell], steps: Steps, device: str) -> list:
    """One job per cell, as a job array; each job trains, evaluates, sweeps and (when asked) times its cell."""
    with executor.batch():
        jobs = [executor.submit(run_slurm_job, cell, steps, device, steps.timing) for cell in cells]
    return jobs


def save_job_ids(folder: Path, jobs: list, cells: list[Cell]) -> None:
    known = load_job_ids(folder)
    known.update({cell.name: str(job.job_id) for cell, job in zip(cells, jobs)})
    rundir.write_json(folder / "jobs.json", known)


def load_job_ids(folder: Path) -> dict:
    path = folder / "jobs.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class _QuietSacct(logging.Filter):
    """Drops submitit's "Bypassing sacct error" warning, repeated at every poll where there is no accounting
    (JobWatch follows the jobs with squeue then and says so once), and counts them. One for the process:
    a logger stops at the first filter that drops a record, so each watch reads the count."""

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" in record.getMessage():
            self.dropped += 1
            return False
        return True


_SACCT_WARNINGS = _QuietSacct()
logging.getLogger("submitit").addFilter(_SACCT_WARNINGS)


class JobWatch:
    """When each submitit job has ended: `ended(job)` is None while it may still run (or its result may
    still be on its way), "result" once it left its outcome, else SLURM's state of a job that ended without
    one (CANCELLED, OUT_OF_MEMORY, PREEMPTED, GONE, ...)."""

    def __init__(self, interval: float = 5.0, say=None, grace: float = RESULT_GRACE):
        self.interval = interval  # seconds between squeue polls, one for every job followed
        self.grace = grace
        self.say = say
        self._states: dict[str, str] | None = {}
        self._asked_at = float("-inf")
        self._ids: set[str] = set()
        self._ended_at: dict[str, float] = {}  # when a job was first seen ended without its result pickle
        self._said = False
        self._sacct_failures_before = _SACCT_WARNINGS.dropped

    def follow(self, jobs) -> None:
        self._ids.update(str(job.job_id) for job in jobs)

    def ended(self, job) -> str | None:
        if job.done() and job.paths.result_pickle.exists():  # done() also refreshes a shared folder's listing
            return "result"
        state = self.state(job)
        if state not in ENDED:
            return None
        if job.paths.result_pickle.exists():  # written since
            return "result"
        first_seen = self._ended_at.setdefault(str(job.job_id), time.monotonic())
        return state if time.monotonic() - first_seen >= self.grace else None

    def settling(self) -> float:
        """Seconds until every job seen ended without a result has had its grace."""
        now = time.monotonic()
        return max([0.0] + [first + self.grace - now for first in self._ended_at.values()])

    def state(self, job) -> str:
        """SLURM's state of the job: sacct's through submitit ("CANCELLED by 1000" -> CANCELLED), or squeue's
        where sacct cannot say (UNKNOWN: no accounting, or not recorded yet)."""
        words = (job.state or "UNKNOWN").split()
        state = words[0] if words else "UNKNOWN"
        if state == "UNKNOWN":
            state = self._squeue_state(str(job.job_id)) or "UNKNOWN"
        return state

    def _squeue_state(self, job_id: str) -> str | None:
        if time.monotonic() - self._asked_at >= self.interval:
            self._states = squeue_states(sorted(self._ids | {job_id}))
            self._asked_at = time.monotonic()
        if self.say and _SACCT_WARNINGS.dropped > self._sacct_failures_before and not self._said:
            self.say("sacct cannot answer here (no accounting): following the jobs with squeue")
            self._said = True
        if self._states is None:
            return None  # squeue could not be asked: keep waiting
        return self._states.get(job_id, "GONE")


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: state} for the jobs squeue knows (ended ones too, for MinJobAge seconds); array elements one
    by one. {} when it knows none of them; None when squeue cannot be run or fails otherwise."""
    command = ["squeue", "--noheader", "--array", "--states=all", "--jobs", ",".join(job_ids), "--format=%i|%T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if state:
            states[job_id] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def slurm_work(plans: list[CellPlan], steps: Steps, folder: Path, watch: JobWatch) -> tuple[dict[str, CellOutcome], dict, list[Cell]]:
    """What a SLURM run of these plans must do: (outcomes known already: failed or done; {name: (job, cell)}
    still queued or running from an earlier `--no-wait` submission, to collect rather than submit again;
    the cells to submit). A cell whose job is still alive counts as pending even when its state.json says
    another host is training it: that host is the job. One whose job ended while its state.json still says
    "running" (killed before it could save its state) is marked interrupted first, so that it resumes."""
    submitit = submitit_module()
    known = load_job_ids(folder)
    jobs = {plan.cell.name: submitit.SlurmJob(folder=folder, job_id=known[plan.cell.name])
            for plan in plans if plan.cell.name in known and not plan.done}
    watch.follow(jobs.values())
    ended = {name: watch.ended(job) for name, job in jobs.items()}
    if watch.settling():  # a job seen ended without its result: give the pickle its grace, once for all
        time.sleep(watch.settling())
        ended = {name: watch.ended(job) for name, job in jobs.items()}
    outcomes, pending, to_submit = {}, {}, []
    for plan in plans:
        name = plan.cell.name
        if name in jobs:
            if ended[name] is None:
                pending[name] = (jobs[name], plan.cell)
                continue
            if release_run(plan.cell, f"its SLURM job {jobs[name].job_id} ended ({ended[name]}) while training"):
                plan = plan_cell(plan.cell, steps)
        if plan.error:
            outcomes[name] = CellOutcome(name, "failed", error=plan.error)
        elif plan.done:
            outcomes[name] = CellOutcome(name, "done")
        else:
            to_submit.append(plan.cell)
    return outcomes, pending, to_submit


def release_run(cell: Cell, reason: str) -> bool:
    """Mark a cell's run interrupted where its state.json still says "running" although the job that trained
    it has ended (SIGKILL, a node's crash: nothing ran to say so). True when it did. Only the status
    changes: the epochs it saved (last.pt) are where it resumes."""
    from dataclasses import replace

    from repro import artifacts

    run = rundir.RunDir(cell.path)
    try:
        state = artifacts.read_state(run) if rundir.is_run_dir(cell.path) else None
    except ReproError:
        return False  # a damaged state.json: plan_cell says so
    if state is None or state.status != "running":
        return False
    artifacts.write_state(run, replace(state, status="interrupted", pid=None, error=reason))
    return True


def collect_job(job, cell: Cell, ended: str = "result") -> CellOutcome:
    """The outcome of a finished job (`ended` as JobWatch says). One that ended without a result is
    interrupted where SLURM stopped it (cancelled, time limit, preemption, node failure: the cell resumes on
    the next run) and failed otherwise (out of memory, killed, a crash), with the last line of its log; its
    run, if state.json still says "running", is marked interrupted (`release_run`). (Never job.result()
    there: it waits for a result that will not come.)"""
    if ended == "result":
        try:
            return job.result()
        except Exception as error:  # submitit raises FailedJobError / UncompletedJobError with the job's stderr
            return CellOutcome(cell.name, "failed", error=f"job {job.job_id} failed: {error_reason(error, 200)}")
    release_run(cell, f"its SLURM job {job.job_id} ended ({ended}) while training")
    if ended in STOPPED_FROM_OUTSIDE or ended == "GONE":
        return CellOutcome(cell.name, "interrupted", error=f"job {job.job_id} ended {ended} before it could report; "
                                                           "the cell resumes on the next run")
    return CellOutcome(cell.name, "failed", error=f"job {job.job_id} failed: it ended {ended} without a result "
                                                  f"({last_log_line(job)}); the cell resumes on the next run")


def last_log_line(job) -> str:
    try:
        lines = [line for line in (job.stderr() or "").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if "error" in line.lower()]  # "srun: error: node1: task 0: Killed"
    return error_reason(Exception((errors or lines)[-1]), 160) if lines else f"no log in {job.paths.folder}"
