"""Run-directory I/O: atomic writes, clear errors for wrong or damaged run folders."""

import json
import os

import pytest
import torch

from repro import artifacts, rundir
from repro.errors import ReproError


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    path = tmp_path / "a.json"
    rundir.write_json(path, {"x": 1, "t": torch.tensor([1.5, 2.0]), "nan": float("nan")})
    rundir.write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_written_files_get_the_usual_mode_not_owner_only(tmp_path):
    path = tmp_path / "report.html"
    rundir.atomic_write_text(path, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_json_of_tensors_and_non_finite(tmp_path):
    path = tmp_path / "a.json"
    rundir.write_json(path, {"t": torch.tensor([1.5, 2.0]), "nan": float("nan"), "i": torch.tensor(3)})
    assert rundir.read_json(path) == {"t": [1.5, 2.0], "nan": None, "i": 3}


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    rundir.write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        rundir.write_json(path, {"bad": object()})
    assert rundir.read_json(path) == {"ok": True}
    assert os.listdir(tmp_path) == ["a.json"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rundir.save_torch(path, {"w": torch.ones(3)})
    assert torch.equal(rundir.load_torch(path)["w"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ReproError, match="corrupt"):
        rundir.load_torch(path)


def test_corrupt_json_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ReproError, match="not valid JSON"):
        rundir.read_json(path)


def test_create_refuses_existing_unless_overwrite(tmp_path):
    run = rundir.create_run_dir(tmp_path / "r")
    rundir.write_json(run.file(rundir.CONFIG), {})
    with pytest.raises(ReproError, match="--overwrite"):
        rundir.create_run_dir(tmp_path / "r")
    rundir.create_run_dir(tmp_path / "r", overwrite=True)
    assert not run.has(rundir.CONFIG)


def test_open_run_errors(tmp_path):
    with pytest.raises(ReproError, match="does not exist"):
        rundir.open_run(tmp_path / "missing")
    with pytest.raises(ReproError, match="not a run directory"):
        rundir.open_run(tmp_path)
    run = rundir.RunDir(tmp_path)
    rundir.write_json(run.file(rundir.CONFIG), {})
    with pytest.raises(ReproError, match="has no checkpoint.pt; train it with `repro train --resume"):
        artifacts.read_checkpoint(rundir.open_run(tmp_path))


def test_find_runs_below_folders(tmp_path):
    for name in ["b", "a", "nested/c"]:
        rundir.write_json(tmp_path / name / rundir.CONFIG, {})
    (tmp_path / "not-a-run").mkdir()
    assert [run.path.name for run in rundir.find_runs([tmp_path])] == ["a", "b", "c"]
    with pytest.raises(ReproError, match="no runs found"):
        rundir.find_runs([tmp_path / "not-a-run"])


def test_error_reason_quotes_one_line_in_whole_words():
    from repro.errors import error_reason

    assert error_reason(ValueError("bad header:\nsecond line")) == "bad header"
    assert error_reason(EOFError()) == "EOFError"
    long = ValueError("word " * 50)
    assert error_reason(long, 22) == "word word word word ..."
