"""How `repro grid --executor slurm` decides that a job has ended (repro.slurm.JobWatch) and what it does
with a run whose job died mid-training (release_run), on stand-in jobs: no cluster needed. The same
paths run against a real SLURM in test_slurm.py."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from repro import artifacts, rundir
from repro import slurm
from repro.slurm import JobWatch, release_run


@dataclass
class StandInJob:
    """What JobWatch reads of a submitit job: its id, sacct's state through submitit, its result pickle."""

    job_id: str
    state: str
    folder: Path

    @property
    def paths(self):
        return SimpleNamespace(result_pickle=self.folder / f"{self.job_id}_result.pkl", folder=self.folder)

    def done(self) -> bool:
        return self.paths.result_pickle.exists() or self.state.split()[0] in slurm.ENDED

    def leave_result(self) -> None:
        self.paths.result_pickle.write_bytes(b"pickle")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(slurm.time, "monotonic", clock)
    return clock


def squeue_says(monkeypatch, states):
    asked = []

    def fake(job_ids):
        asked.append(job_ids)
        return states if states is None else dict(states)

    monkeypatch.setattr(slurm, "squeue_states", fake)
    return asked


def test_sacct_states_with_who_cancelled_are_read_by_their_first_word(tmp_path, clock, monkeypatch):
    squeue_says(monkeypatch, {})
    job = StandInJob("7", "CANCELLED by 1000", tmp_path)
    watch = JobWatch(grace=15)
    assert watch.state(job) == "CANCELLED"
    assert watch.ended(job) is None  # ended, but its result may still be on its way
    clock.now += 15
    assert watch.ended(job) == "CANCELLED"


def test_a_preempted_job_that_sacct_reports_is_ended_not_waited_on(tmp_path, clock, monkeypatch):
    squeue_says(monkeypatch, {})
    job = StandInJob("8", "PREEMPTED", tmp_path)
    watch = JobWatch(grace=15)
    watch.ended(job)
    clock.now += 16
    assert watch.ended(job) == "PREEMPTED"  # submitted with --no-requeue: it will not run again


def test_a_result_that_appears_within_the_grace_is_collected(tmp_path, clock, monkeypatch):
    squeue_says(monkeypatch, {"9": "COMPLETED"})
    job = StandInJob("9", "UNKNOWN", tmp_path)  # no accounting: sacct cannot say, squeue can
    watch = JobWatch(grace=15)
    watch.follow([job])
    assert watch.ended(job) is None and watch.settling() == 15
    clock.now += 5
    job.leave_result()  # a shared file system shows it late
    assert watch.ended(job) == "result"


def test_running_and_pending_jobs_have_not_ended_and_unlisted_ones_have(tmp_path, clock, monkeypatch):
    asked = squeue_says(monkeypatch, {"1": "RUNNING", "2": "PENDING"})
    jobs = [StandInJob(i, "UNKNOWN", tmp_path) for i in ("1", "2", "3")]
    watch = JobWatch(interval=5, grace=0)
    watch.follow(jobs)
    assert [watch.ended(job) for job in jobs] == [None, None, "GONE"]  # squeue forgets ended jobs after MinJobAge
    assert asked == [["1", "2", "3"]]  # one squeue for all the jobs in a poll
    running = StandInJob("4", "RUNNING", tmp_path)  # sacct answers: squeue is not asked
    assert watch.ended(running) is None and len(asked) == 1


def test_where_squeue_cannot_be_run_the_watch_keeps_waiting(tmp_path, clock, monkeypatch):
    squeue_says(monkeypatch, None)
    assert JobWatch(grace=0).ended(StandInJob("5", "UNKNOWN", tmp_path)) is None


def test_squeue_is_named_only_once_sacct_was_seen_to_fail(tmp_path, clock, monkeypatch, caplog):
    squeue_says(monkeypatch, {"6": "RUNNING"})
    said = []
    watch = JobWatch(say=said.append)
    job = StandInJob("6", "UNKNOWN", tmp_path)  # just submitted: sacct has not recorded it yet
    watch.ended(job)
    assert said == []
    with caplog.at_level(logging.WARNING, logger="submitit"):
        logging.getLogger("submitit").warning("Call #1 - Bypassing sacct error Command 'sacct' returned 1, status may be inaccurate.")
    clock.now += 5
    watch.ended(job)
    watch.ended(job)
    assert said == ["sacct cannot answer here (no accounting): following the jobs with squeue"]
    assert "Bypassing sacct" not in caplog.text  # dropped: it would repeat at every poll


def write_run(path: Path, state: dict) -> rundir.RunDir:
    path.mkdir()
    (path / rundir.CONFIG).write_text("{}")
    (path / rundir.STATE).write_text(json.dumps(state))
    return rundir.RunDir(path)


def test_a_run_left_running_by_a_dead_job_is_released_and_nothing_else_changes(tmp_path):
    running = {"status": "running", "epoch": 3, "epochs": 30, "stopped_early": False, "error": None,
               "pid": 4242, "host": "node-elsewhere", "updated": "2026-12-06T10:00:00+00:00"}
    run = write_run(tmp_path / "cell", running)
    cell = SimpleNamespace(path=run.path)
    assert release_run(cell, "its SLURM job 11 ended (OUT_OF_MEMORY) while training")
    state = artifacts.read_state(run)
    assert (state.status, state.epoch, state.epochs, state.pid) == ("interrupted", 3, 30, None)
    assert "job 11 ended (OUT_OF_MEMORY)" in state.error
    assert not release_run(cell, "again")  # only a "running" run is released
    finished = write_run(tmp_path / "done", running | {"status": "finished", "pid": None, "host": None})
    assert not release_run(SimpleNamespace(path=finished.path), "no")
    assert artifacts.read_state(finished).status == "finished"
    assert not release_run(SimpleNamespace(path=tmp_path / "absent"), "no")
