"""`repro grid --executor slurm` against a real one-node SLURM on localhost (tests/slurm_cluster.py): a job
array end to end, `--no-wait` then collecting, a time limit, a failing cell, `scancel` (graceful and hard).
Every test skips, with the step that failed, where SLURM is not installed or cannot start (not root, no
Linux); `.ci/run` installs it with apt-get where it can."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repro import artifacts, rundir
from repro.cli import app

sys.path.insert(0, str(Path(__file__).parent))
import slurm_cluster  # noqa: E402  (the helper beside this file; also a script)
from test_grid import TINY as TINY_CELL  # noqa: E402

pytest.importorskip("submitit")
runner = CliRunner()

# test_grid's tiny bnet cell (about a second an epoch once torch is imported), its epochs set by each test.
TINY = TINY_CELL.replace("epochs = 1\n", "") + 'method = "bnet"\n'
ONE_CELL = '[axes]\nmethod = ["bnet"]\n'  # a grid of one cell
CELL = "vgg13-bnet-synthetic-seed0"  # its name: nothing varies
# That cell for longer than any test waits on any machine (a fast one ran 400 epochs in 81 s, inside a
# 3-minute limit): every test stops it from outside. patience 0: it never stops early either (its validation
# loss on random labels stops improving within a few epochs).
LONG_EPOCHS = 100_000
LONG = TINY + f"epochs = {LONG_EPOCHS}\npatience = 0\n" + ONE_CELL


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    try:
        seconds = slurm_cluster.start(folder)
    except slurm_cluster.ClusterUnavailable as error:
        pytest.skip(f"no SLURM cluster: {error}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    print(f"\nSLURM cluster up in {seconds:.1f} s in {folder}")
    yield folder
    slurm_cluster.stop(folder)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def write_grid(folder: Path, body: str) -> Path:
    path = folder / "g.toml"
    path.write_text(f'name = "g"\noutput = "{folder / "out"}"\nreport = false\n' + textwrap.dedent(body))
    return path


def grid(*args):
    return runner.invoke(app, ["grid", *[str(a) for a in args], "--executor", "slurm"])


def text(result) -> str:
    output = result if isinstance(result, str) else result.output
    return " ".join(output.split())


def job_ids(folder: Path) -> dict:
    return json.loads((folder / ".submitit" / "jobs.json").read_text())


def squeue(job_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return done.stdout.strip()


def wait_until(check, seconds: float, what: str):
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {seconds} s")


def epochs_done(run: Path) -> int:
    try:
        return len(rundir.read_csv(run / rundir.METRICS))
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_the_smoke_preset_runs_as_a_job_array_and_is_then_done(cluster, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # the preset writes to runs/grid/smoke below the working folder
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="submitit"):  # what submitit would print reaches caplog
        first = grid("smoke")
    assert first.exit_code == 0, first.output
    print(f"smoke grid on SLURM: {time.monotonic() - start:.1f} s")
    out = tmp_path / "runs" / "grid" / "smoke"
    ids = job_ids(out)
    assert sorted(ids) == ["baseline", "bnet", "proposed"]
    assert len({job_id.split("_")[0] for job_id in ids.values()}) == 1  # one array, an element per cell
    assert all(job_id.split("_")[1].isdigit() for job_id in ids.values())
    for name in ids:  # each job trained, evaluated, swept and timed its cell on the node
        assert (out / name / rundir.TIMING).is_file() and (out / name / rundir.EVAL).is_file()
    assert all(squeue(job_id) == "COMPLETED" for job_id in ids.values())
    assert (out / "report" / "report.html").is_file()
    assert "submitted 3 job(s)" in text(first)
    # This cluster has no accounting: sacct failed at every poll, once said in our words, never in submitit's.
    assert "sacct cannot answer here" in text(first) and "Bypassing sacct" not in caplog.text
    again = grid("smoke", "--no-report")
    assert again.exit_code == 0 and "submitted" not in again.output and job_ids(out) == ids
    assert "3 cell(s)" in text(again) and text(again).count(" done ") == 3


@pytest.mark.slow
def test_no_wait_then_the_same_command_collects_instead_of_resubmitting(cluster, tmp_path):
    path = write_grid(tmp_path, TINY + "epochs = 2\n[axes]\nseed = [0, 1]\n")
    first = grid(path, "--no-wait")
    assert first.exit_code == 0 and "not waiting" in text(first), first.output
    ids = job_ids(tmp_path / "out")
    second = grid(path)
    assert second.exit_code == 0, second.output
    assert "submitted" not in second.output and job_ids(tmp_path / "out") == ids
    for name in ids:
        assert artifacts.read_state(rundir.RunDir(tmp_path / "out" / name)).finished


@pytest.mark.slow
def test_a_failing_cell_is_isolated_and_the_exit_code_says_so(cluster, tmp_path):
    path = write_grid(tmp_path, TINY + f"""
        epochs = 1
        [axes]
        dataset = ["cifar10", "synthetic"]
        data_dir = ["{tmp_path / 'no-data'}"]
        """)
    result = grid(path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "dataset cifar10 not found" in text(result) and "1 of 2 cell(s) failed" in text(result)
    assert rundir.RunDir(tmp_path / "out" / "synthetic").has(rundir.EVAL)


@pytest.mark.slow
def test_a_cell_past_its_time_limit_is_interrupted_and_resumes(cluster, tmp_path):
    # --time 3: SLURM's warning (SIGUSR2, which submitit asks for 90 s before the limit) comes after about 90 s,
    # time enough for the job to import torch and save epochs even on a loaded machine (--time 2 was not).
    path = write_grid(tmp_path, LONG)
    first = grid(path, "--time", "3")
    assert first.exit_code == 1, first.output
    assert "interrupted by SLURM" in text(first) and "resumes on the next run" in text(first)
    run = tmp_path / "out" / CELL
    state = artifacts.read_state(rundir.RunDir(run))
    assert state.status == "interrupted" and 0 < state.epoch < LONG_EPOCHS
    assert f"resume after epoch {state.epoch}/{LONG_EPOCHS}" in resume_note(path)


def start_then_stop(tmp_path, stop) -> tuple[Path, str, int]:
    """A long one-cell grid submitted with --no-wait, `stop(job_id, run)` once two epochs are saved, and back
    when SLURM says the job ended: (grid file, job id, epochs saved)."""
    path = write_grid(tmp_path, LONG)
    assert grid(path, "--no-wait").exit_code == 0
    (job_id,) = job_ids(tmp_path / "out").values()
    run = tmp_path / "out" / CELL
    wait_until(lambda: epochs_done(run) >= 2, 120, "two epochs in the job")
    stop(job_id, run)
    wait_until(lambda: squeue(job_id) not in ("RUNNING", "COMPLETING", "PENDING"), 60, "the job to end")
    return path, job_id, epochs_done(run)


def scancel(job_id: str, run: Path) -> None:
    subprocess.run(["scancel", job_id], check=True)  # SIGTERM, then SIGKILL after KillWait (5 s here)


def kill_the_trainer(job_id: str, run: Path) -> None:
    os.kill(artifacts.read_state(rundir.RunDir(run)).pid, signal.SIGKILL)  # as the OOM killer does


def resume_note(path: Path) -> str:
    """The dry run's plan as one line of words, the table's borders taken out (a long note wraps in its cell)."""
    return text(runner.invoke(app, ["grid", str(path), "--dry-run"]).output.replace("│", " "))


@pytest.mark.slow
def test_scancel_leaves_a_resumable_run(cluster, tmp_path):
    path, job_id, epochs = start_then_stop(tmp_path, scancel)
    state = artifacts.read_state(rundir.RunDir(tmp_path / "out" / CELL))
    assert state.status == "interrupted" and state.epoch >= 2  # the trainer's SIGTERM handler saved it
    assert f"resume after epoch {state.epoch}/{LONG_EPOCHS}" in resume_note(path)
    again = grid(path, "--no-report", "--no-wait")  # the cancelled job is over: the cell is submitted again
    try:
        assert again.exit_code == 0 and "submitted 1 job(s)" in text(again), again.output
        assert job_ids(tmp_path / "out")[CELL] != job_id
    finally:
        cancel_all(tmp_path / "out")


def cancel_all(out: Path) -> None:
    """scancel every job a test's grid submitted (jobs.json), and wait until SLURM no longer runs them."""
    ids = list(job_ids(out).values()) if (out / ".submitit" / "jobs.json").is_file() else []
    if ids:
        subprocess.run(["scancel", *ids], check=False)
        for job_id in ids:
            wait_until(lambda: squeue(job_id) not in ("RUNNING", "COMPLETING", "PENDING"), 60, f"job {job_id} to end")


@pytest.mark.slow
def test_a_job_killed_without_a_word_is_found_ended_and_its_run_resumed_from_another_node(cluster, tmp_path):
    """SIGKILL to the trainer (the OOM killer, a node's crash): no handler runs, no result is written and
    state.json still says "running". sacct cannot say the job ended (no accounting), only squeue can: a
    waiting `repro grid` must report the cell failed, not wait for ever. And on a real cluster the run names
    the node the job ran on, where its dead process cannot be seen from here: the job's end stands for it."""
    path = write_grid(tmp_path, LONG)
    waiting = subprocess.Popen([sys.executable, "-m", "repro", "grid", str(path), "--executor", "slurm"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run = tmp_path / "out" / CELL
        wait_until(lambda: epochs_done(run) >= 2, 120, "two epochs in the job")
        kill_the_trainer("", run)
        output, _ = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    output = " ".join(output.split())
    (job_id,) = job_ids(tmp_path / "out").values()
    assert waiting.returncode == 1 and f"job {job_id} failed" in output and "1 of 1 cell(s) failed" in output, output
    assert "sacct cannot answer here" in output and "Bypassing sacct" not in output and "Traceback" not in output

    state = json.loads((run / rundir.STATE).read_text())
    assert state["status"] == "interrupted" and f"job {job_id} ended" in state["error"]  # released by the grid
    # As if no grid had been waiting (--no-wait): the file still says a process on another node trains it,
    # and only the job's end says that process is gone.
    state |= {"status": "running", "host": "node-elsewhere", "pid": 4242, "error": None}
    (run / rundir.STATE).write_text(json.dumps(state))
    # The epoch a resume starts from is last.pt's: one past state.json's when the kill fell between the two writes.
    saved = artifacts.read_training_state(rundir.RunDir(run)).epoch
    assert saved in (state["epoch"], state["epoch"] + 1)
    again = grid(path, "--no-report", "--no-wait")
    try:
        assert again.exit_code == 0 and "submitted 1 job(s)" in text(again), again.output
        # The new job resumes the run (it must not refuse it as "being trained on node-elsewhere"): it trains
        # on from the epochs saved, under its own process.
        wait_until(lambda: epochs_done(run) >= state["epoch"] + 2, 120, "the resubmitted job to train on")
        resumed = artifacts.read_state(rundir.RunDir(run))
        assert resumed.status == "running" and resumed.pid != state["pid"] and resumed.host != "node-elsewhere"
        assert f"resumed after epoch {saved}" in (run / rundir.LOG).read_text()
    finally:
        cancel_all(tmp_path / "out")


# ---------------------------------------------------------------------------------------------- the docs


def test_the_documented_paper_command_plans_and_its_options_reach_sbatch(tmp_path, monkeypatch):
    """docs/slurm.md's command for the paper's grid, as written (with --dry-run for --no-wait: no cluster
    needed), and its table's promise of what each option becomes in the sbatch script."""
    import re
    import shlex

    import submitit

    from repro.slurm import make_executor, slurm_parameters

    doc = (Path(__file__).parents[1] / "docs" / "slurm.md").read_text()
    command = re.search(r"\.venv/bin/repro grid paper (--set .*?--no-wait)", doc.replace("\\\n", " "), re.S).group(1)
    args = shlex.split(command.replace("--no-wait", "--dry-run"))
    monkeypatch.chdir(tmp_path)
    planned = runner.invoke(app, ["grid", "paper", *args])
    assert planned.exit_code == 0, planned.output
    assert "135 cell(s)" in text(planned) and planned.output.count("new run") == 135

    options = dict(zip(args[::2], args[1::2]))
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    parameters = slurm_parameters({"partition": options["--partition"], "gpus_per_job": int(options["--gpus-per-job"]),
                                   "cpus_per_job": int(options["--cpus-per-job"]), "time": int(options["--time"]),
                                   "mem": float(options["--mem"])})
    executor = make_executor(tmp_path, parameters, jobs=int(options["--jobs"]))
    script = executor._executor._make_submission_file_text("python -m repro", "uid")
    for row in re.findall(r"^\| `(--[a-z-]+) [A-Z]+` \| `(--[a-z-]+)=", doc, re.M):
        option, sbatch = row
        if option != "--jobs":  # the array line is written at submission, for the number of cells
            assert f"#SBATCH {sbatch}=" in script, (option, sbatch)
    assert f"#SBATCH --time={options['--time']}" in script and "#SBATCH --mem=32GB" in script
