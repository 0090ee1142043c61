"""Every file a command reads from a run directory, damaged every way we can think of: wrong structure,
wrong types, shapes or dtypes, missing keys, NaN where numbers belong, not a file of its kind at all.

The answer is always one line naming the file and what is wrong, a non-zero exit code, no traceback, and
nothing already written overwritten. The report, which reads a whole folder of runs, lists a damaged file
as missing (with why) and reports everything else.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from repro import rundir
from repro.cli import app

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--subset", "150", "--epochs", "1", "--batch-size", "50", "--width", "0.125",
        "--batch-norm", "--classifier", "linear", "--head", "pool", "--precision", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished tiny proposed run with every result file (eval, timing, sweep, calibration)."""
    path = tmp_path_factory.mktemp("good") / "run"
    for args in (["train", *TINY, "--method", "proposed", "--run-dir", path],
                 ["eval", path, "--device", "cpu", "--timing", "--timing-images", "4", "--batch-size", "16"],
                 ["sweep", path, "--max-drop", "1"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return path


def copy_of(good_run: Path, tmp_path: Path) -> Path:
    path = tmp_path / "run"
    shutil.copytree(good_run, path)
    return path


def snapshot(path: Path) -> dict:
    return {file.name: file.read_bytes() for file in path.iterdir() if file.is_file()}


def one_line_error(args, path: Path, names: list[str]) -> str:
    """Run a command that must fail: one line naming the file, exit 1, and no file changed."""
    before = snapshot(path)
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.stderr.split())
    assert text.startswith("Error: ") and "\n" not in result.stderr.strip(), result.stderr
    assert any(name in text for name in names), text
    assert snapshot(path) == before  # nothing overwritten, nothing half-written
    return text


def save(path: Path, obj) -> None:
    torch.save(obj, path)


def damage_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


# ---------------------------------------------------------------------------------------------- config.json

CONFIG_DAMAGE = {
    "not JSON": lambda p: p.write_text("{not json"),
    "a list": lambda p: p.write_text("[1, 2]"),
    "a string where a number belongs": lambda p: damage_json(p, lambda d: {**d, "epochs": "30"}),
    "an unknown key": lambda p: damage_json(p, lambda d: {**d, "learning_rate": 0.1}),
    "NaN": lambda p: p.write_text(p.read_text().replace('"lr": 0.0005', '"lr": NaN')),
    "an unknown model": lambda p: damage_json(p, lambda d: {**d, "model": "vgg99"}),
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_damaged_config(good_run, tmp_path, damage, command):
    path = copy_of(good_run, tmp_path)
    CONFIG_DAMAGE[damage](path / rundir.CONFIG)
    args = ["eval", path, "--device", "cpu"] if command == "eval" else ["train", "--resume", path]
    text = one_line_error(args, path, [rundir.CONFIG])
    assert "damaged" in text or "not a JSON object" in text or "unknown" in text


def test_a_checkpoint_trained_with_another_config_is_refused(good_run, tmp_path):
    path = copy_of(good_run, tmp_path)
    damage_json(path / rundir.CONFIG, lambda d: {**d, "lr": 0.1})  # a valid config, but not the one trained
    text = one_line_error(["eval", path, "--device", "cpu"], path, [rundir.CONFIG])
    assert "was trained with another config" in text and "lr: 0.0005 -> 0.1" in text


# ---------------------------------------------------------------------------------------------- checkpoint.pt

CHECKPOINT_DAMAGE = {
    "not a torch file": lambda p: p.write_bytes(b"not a checkpoint"),
    "a list": lambda p: save(p, [1, 2, 3]),
    "missing keys": lambda p: save(p, {"model": torch.load(p, weights_only=True)["model"]}),
    "NaN weights": lambda p: save(p, {**torch.load(p, weights_only=True), "model": {
        k: (torch.full_like(v, math.nan) if v.is_floating_point() else v) for k, v in torch.load(p, weights_only=True)["model"].items()}}),
    "a string epoch": lambda p: save(p, {**torch.load(p, weights_only=True), "epoch": "one"}),
    "weights of another shape": lambda p: save(p, {**torch.load(p, weights_only=True), "model": {
        k: torch.zeros(3) for k in torch.load(p, weights_only=True)["model"]}}),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint(good_run, tmp_path, damage):
    path = copy_of(good_run, tmp_path)
    CHECKPOINT_DAMAGE[damage](path / rundir.CHECKPOINT)
    one_line_error(["eval", path, "--device", "cpu"], path, [rundir.CHECKPOINT, "checkpoint of run"])


# ---------------------------------------------------------------------------------------------- outputs.pt


def _outputs(p: Path) -> dict:
    return torch.load(p, weights_only=True)


def _with_split(p: Path, **changes) -> dict:
    data = _outputs(p)
    data["splits"]["val"] = {**data["splits"]["val"], **changes}
    return data


OUTPUTS_DAMAGE = {
    "not a torch file": lambda p: p.write_bytes(b"\x00" * 10),
    "a list": lambda p: save(p, [1, 2]),
    "no splits": lambda p: save(p, {k: v for k, v in _outputs(p).items() if k != "splits"}),
    "logits of the wrong shape": lambda p: save(p, _with_split(p, logits=torch.zeros(2, 3))),
    "float targets": lambda p: save(p, _with_split(p, targets=_outputs(p)["splits"]["val"]["targets"].float())),
    "targets out of range": lambda p: save(p, _with_split(p, targets=_outputs(p)["splits"]["val"]["targets"] + 100)),
    "NaN logits": lambda p: save(p, _with_split(p, logits=torch.full_like(_outputs(p)["splits"]["val"]["logits"], math.nan))),
    "gates of the wrong shape": lambda p: save(p, _with_split(p, gates=torch.zeros(1, 1))),
    "a number where the checkpoint hash belongs": lambda p: save(p, {**_outputs(p), "checkpoint_sha256": 5}),
}


@pytest.mark.parametrize("damage", list(OUTPUTS_DAMAGE))
def test_damaged_outputs(good_run, tmp_path, damage):
    path = copy_of(good_run, tmp_path)
    OUTPUTS_DAMAGE[damage](path / rundir.OUTPUTS)
    text = one_line_error(["sweep", path], path, [rundir.OUTPUTS])
    assert "repro eval" in text  # and how to recompute it


# ---------------------------------------------------------------------------------------------- eval.json

EVAL_DAMAGE = {
    "not JSON": lambda p: p.write_text("{"),
    "a list": lambda p: p.write_text("[]"),
    "no plain MACs": lambda p: damage_json(p, lambda d: {k: v for k, v in d.items() if k != "plain_macs"}),
    "NaN plain MACs (written as null)": lambda p: damage_json(p, lambda d: {**d, "plain_macs": None}),
    "a string hash of another kind": lambda p: damage_json(p, lambda d: {**d, "checkpoint_sha256": 12}),
}


@pytest.mark.parametrize("damage", list(EVAL_DAMAGE))
def test_damaged_eval_json(good_run, tmp_path, damage):
    path = copy_of(good_run, tmp_path)
    EVAL_DAMAGE[damage](path / rundir.EVAL)
    one_line_error(["sweep", path], path, [rundir.EVAL])


# ---------------------------------------------------------------------------------------------- last.pt, state.json, env.json


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A tiny 2-epoch run stopped after its first epoch, as if killed in its second: a real last.pt."""
    from repro.config import TrainConfig
    from repro.trainer import fit

    config = TrainConfig.from_recipe("report", method="bnet", dataset="synthetic", subset=150, epochs=2, batch_size=50,
                                     width=0.125, batch_norm=True, classifier="linear", head="pool", precision="fp32")
    path = tmp_path_factory.mktemp("interrupted") / "run"
    fit(config, path, stop_after=1)
    assert json.loads((path / rundir.STATE).read_text())["status"] == "interrupted"
    return path


@pytest.fixture
def unfinished_run(interrupted_run, tmp_path) -> Path:
    return copy_of(interrupted_run, tmp_path)


LAST_DAMAGE = {
    "not a torch file": lambda p: p.write_bytes(b"junk"),
    "a list": lambda p: save(p, [1]),
    "no optimizer": lambda p: save(p, {k: v for k, v in torch.load(p, weights_only=True).items() if k != "optimizer"}),
    "a string epoch": lambda p: save(p, {**torch.load(p, weights_only=True), "epoch": "1"}),
    "an optimizer state of another model": lambda p: save(p, {**torch.load(p, weights_only=True),
                                                           "optimizer": {"state": {}, "param_groups": []}}),
    "weights of another model": lambda p: save(p, {**torch.load(p, weights_only=True), "model": {"w": torch.zeros(2)}}),
}


@pytest.mark.parametrize("damage", list(LAST_DAMAGE))
def test_damaged_last_pt(unfinished_run, damage):
    LAST_DAMAGE[damage](unfinished_run / rundir.LAST)
    one_line_error(["train", "--resume", unfinished_run], unfinished_run, [rundir.LAST])


STATE_DAMAGE = {
    "not JSON": lambda p: p.write_text("nope"),
    "an unknown status": lambda p: damage_json(p, lambda d: {**d, "status": "sleeping"}),
    "a string epoch": lambda p: damage_json(p, lambda d: {**d, "epoch": "1"}),
}


@pytest.mark.parametrize("damage", list(STATE_DAMAGE))
def test_damaged_state_json(unfinished_run, damage):
    STATE_DAMAGE[damage](unfinished_run / rundir.STATE)
    one_line_error(["train", "--resume", unfinished_run], unfinished_run, [rundir.STATE])


def test_damaged_env_json(unfinished_run):
    damage_json(unfinished_run / rundir.ENV, lambda d: {**d, "dataset_fingerprint": 3})
    one_line_error(["train", "--resume", unfinished_run], unfinished_run, [rundir.ENV])


def test_damaged_metrics_of_a_finished_run(good_run, tmp_path):
    path = copy_of(good_run, tmp_path)
    (path / rundir.METRICS).write_text("epoch,train_loss,val_loss,val_acc_method\n1,abc,1,0.5\n")
    one_line_error(["train", "--resume", path], path, [rundir.METRICS])


# ---------------------------------------------------------------------------------------------- the report

REPORT_DAMAGE = {
    rundir.TIMING: lambda p: damage_json(p, lambda d: {**d, "batch1": []}),
    rundir.SWEEP: lambda p: p.write_text("split,criterion\nval,entropy\n"),
    rundir.CALIBRATION: lambda p: damage_json(p, lambda d: {**d, "test": {"accuracy": "high"}}),
    rundir.METRICS: lambda p: p.write_text("epoch,train_loss,val_loss,val_acc_method\n2,1,1,0.5\n"),
    rundir.STATE: lambda p: p.write_text("{"),
}


@pytest.mark.parametrize("name", list(REPORT_DAMAGE))
def test_the_report_lists_a_damaged_file_as_missing_and_goes_on(good_run, tmp_path, name):
    from repro.report.collect import collect

    path = copy_of(good_run, tmp_path / "runs")
    REPORT_DAMAGE[name](path / name)
    (record,) = collect([tmp_path / "runs"]).runs
    (item,) = [item for item in record.missing if item.what == name]
    assert "unreadable" in item.why and "damaged" in item.why
    result = runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0 and "Traceback" not in result.output


def test_a_run_killed_after_its_last_epoch_was_saved_finishes_on_resume(unfinished_run):
    """last.pt says the run is over, state.json still "interrupted" (killed between the two writes): resuming
    records it as finished and drops last.pt, so it is never restarted from scratch."""
    last = torch.load(unfinished_run / rundir.LAST, weights_only=True)
    rows = last["rows"] + [{**last["rows"][0], "epoch": 2}]
    save(unfinished_run / rundir.LAST, {**last, "epoch": 2, "rows": rows, "finished": True})
    result = runner.invoke(app, ["train", "--resume", str(unfinished_run)])
    assert result.exit_code == 0, result.output
    state = json.loads((unfinished_run / rundir.STATE).read_text())
    assert (state["status"], state["epoch"]) == ("finished", 2) and not (unfinished_run / rundir.LAST).exists()

