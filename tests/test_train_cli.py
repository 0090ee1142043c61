"""`repro train` through Typer's CliRunner: the default command works, --seeds, and every bad input is one
clear line with a non-zero exit (unknown names exit 2 listing the valid ones)."""

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from repro import rundir
from repro.rebuild import load_run
from repro.cli import app
from repro.errors import ReproError

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def tiny(data_dir, *extra) -> list[str]:
    return ["train", "--dataset", "fashion-mnist", "--data-dir", str(data_dir), "--subset", "100", "--epochs", "1",
            "--batch-size", "25", "--width", "0.125", "--device", "cpu", *extra]


def invoke(args, cwd: Path):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def test_default_command_trains_on_the_synthetic_set(tmp_path):
    result = invoke(["train", "--model", "vgg13", "--method", "proposed", "--width", "0.125", "--epochs", "1",
                     "--subset", "100", "--batch-size", "50", "--device", "cpu"], tmp_path)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "vgg13-proposed-synthetic-seed0"
    config = rundir.read_json(run / rundir.CONFIG)
    assert (config["dataset"], config["recipe"], config["method"], config["exits"]) == ("synthetic", "report", "proposed", list(range(9)))
    assert len(rundir.read_csv(run / rundir.METRICS)) == 1


@pytest.mark.parametrize("option, value, valid", [
    ("--model", "vgg99", "alexnet, resnet18, vgg13"),
    ("--method", "fancy", "baseline, bnet, proposed, report-maxprob, report-proposed"),
    ("--dataset", "imagenet", "cifar10"),
    ("--recipe", "ancient", "modern, report"),
    ("--mix", "average", "logits, probs"),
    ("--device", "tpu", "auto, cpu, cuda"),
])
def test_unknown_names_exit_2_listing_the_valid_ones(option, value, valid, tmp_path):
    result = invoke(["train", option, value], tmp_path)
    assert result.exit_code == 2, result.output
    assert value in result.output and valid in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--method", "bnet", "--cost-weight", "0.5"], "--cost-weight does not apply to method 'bnet'"),
    (["--method", "baseline", "--exits", "0,1"], "baseline trains the network without exits"),
    (["--exits", "a,b"], "--exits must be comma-separated integers"),
    (["--seed", "1", "--seeds", "0,1"], "--seed or --seeds"),
    (["--seeds", "0,0"], "repeated seed"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--name", "a", "--run-dir", "b"], "--name or --run-dir"),
])
def test_bad_options_are_one_line_errors(args, message, tmp_path):
    result = invoke(["train", *args], tmp_path)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(tmp_path):
    result = invoke(["train", "--device", "cuda"], tmp_path)
    assert result.exit_code == 1 and "sees no CUDA GPU" in result.output


@needs_fashion
def test_alphas_of_the_wrong_length(data_dir, tmp_path):
    result = invoke(tiny(data_dir, "--method", "bnet", "--exits", "0,4", "--alphas", "1,1", "--run-dir", tmp_path / "r"), tmp_path)
    assert result.exit_code == 1 and "2 weights but vgg13 has 3 exits" in result.output
    assert not (tmp_path / "r").exists()  # a config that cannot be built leaves no run directory behind


def test_a_subset_too_small_for_a_validation_split_leaves_no_run_behind(tmp_path):
    result = invoke(["train", "--subset", "20", "--width", "0.125", "--run-dir", tmp_path / "r"], tmp_path)
    assert result.exit_code == 1 and "the val split of synthetic is empty" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


@needs_fashion
def test_existing_run_dir_overwrite_resume_and_finished(data_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny(data_dir, "--method", "bnet", "--exits", "0,4", "--run-dir", run)
    assert invoke(args, tmp_path).exit_code == 0
    again = invoke(args, tmp_path)
    assert again.exit_code == 1 and "already exists" in again.output and "--overwrite" in again.output
    assert invoke([*args, "--overwrite"], tmp_path).exit_code == 0
    changed = invoke(["train", "--resume", run, "--lr", "0.1", "--exits", "0,4", "--method", "proposed"], tmp_path)
    assert changed.exit_code == 1
    assert "--lr 0.1 (the run has 0.0005)" in changed.output and "--method 'proposed' (the run has 'bnet')" in changed.output
    assert "--exits" not in changed.output  # the same value is no difference
    finished = invoke(["train", "--resume", run, "--method", "bnet"], tmp_path)
    assert finished.exit_code == 0 and "already finished" in " ".join(finished.output.split())
    missing = invoke(["train", "--resume", tmp_path / "nothing"], tmp_path)
    assert missing.exit_code == 1 and "does not exist" in missing.output


@needs_fashion
def test_corrupt_checkpoints_are_clear_errors(data_dir, tmp_path):
    run = tmp_path / "run"
    assert invoke(tiny(data_dir, "--method", "baseline", "--epochs", "2", "--run-dir", run), tmp_path).exit_code == 0
    (run / rundir.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ReproError, match="corrupt"):
        load_run(run)
    assert rundir.read_json(run / rundir.STATE)["epoch"] == 2 and not (run / rundir.LAST).exists()
    # A damaged last.pt of an unfinished run (as if killed in epoch 2): resuming says so instead of a traceback.
    rundir.write_json(run / rundir.STATE, {"status": "interrupted", "epoch": 1, "epochs": 2, "stopped_early": False, "error": None})
    (run / rundir.LAST).write_bytes(rundir.file_sha256(run / rundir.CONFIG).encode())
    result = invoke(["train", "--resume", run], tmp_path)
    assert result.exit_code == 1 and "last.pt is damaged" in result.output and "Traceback" not in result.output


@needs_fashion
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    import repro.trainer

    # 80 training images in batches of 25, 25, 25, 5: 4 steps per epoch. From the first step of epoch 2 the
    # learning rate is 1e30, so the weights explode and the next forward pass gives a non-finite loss.
    real = repro.trainer.learning_rate
    monkeypatch.setattr(repro.trainer, "learning_rate", lambda config, step, total, per_epoch:
                        1e30 if step >= 4 else real(config, step, total, per_epoch))
    run = tmp_path / "run"
    result = invoke(tiny(data_dir, "--method", "proposed", "--epochs", "3", "--run-dir", run), tmp_path)
    assert result.exit_code == 1, result.output
    assert "the training loss became nan" in result.output or "the training loss became inf" in result.output
    assert "last good checkpoint is kept" in result.output
    checkpoint = rundir.load_torch(run / rundir.CHECKPOINT)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    assert rundir.load_torch(run / rundir.LAST)["epoch"] == 1
    assert "stopped" in (run / rundir.LOG).read_text()


@needs_fashion
def test_seeds_train_one_run_per_seed(data_dir, tmp_path):
    result = invoke(tiny(data_dir, "--method", "baseline", "--seeds", "0,1", "--name", "pair"), tmp_path)
    assert result.exit_code == 0, result.output
    weights = []
    for seed in (0, 1):
        run = tmp_path / "runs" / f"pair-seed{seed}"
        assert rundir.read_json(run / rundir.CONFIG)["seed"] == seed
        assert rundir.read_json(run / rundir.ENV)["seed"] == seed
        weights.append(rundir.load_torch(run / rundir.CHECKPOINT)["model"])
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_help_and_messages_wrap_at_spaces_never_inside_a_path(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    help_text = runner.invoke(app, ["train", "--help"], terminal_width=80).output
    for option in ("--batch-size", "--joint-warmup", "--select-best", "--detach-confidence", "--precision", "--resume"):
        assert option in help_text  # never cut
    assert "<bool>" not in help_text and "{run}" not in help_text
    assert all(len(line) <= 80 for line in help_text.splitlines())
    for command in ("sweep", "report", "verify"):  # lists read as the user types them
        listed = runner.invoke(app, [command, "--help"], terminal_width=80).output
        assert "list[" not in listed, listed
    for panel in ("Model", "Data", "Method", "Optimisation", "Run"):
        assert f"─ {panel} ─" in help_text
    # A message holding a path longer than the line keeps the path whole on one line.
    from repro.console import Console, say

    out = Console(width=40, record=True)
    path = "/a/very/long/folder/that/cannot/fit/in/forty/columns/report.md"
    say(f"Report written to {path} and a few more words here", out=out)
    lines = out.export_text().splitlines()
    assert path in lines and all(len(line) <= 40 for line in lines if line != path)


def test_verify_retrains_the_first_epochs_and_compares(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--method", "bnet", "--width", "0.125", "--epochs", "3", "--subset", "120", "--batch-size", "40",
            "--batch-norm", "--classifier", "linear", "--head", "pool", "--precision", "fp32", "--device", "cpu", "--run-dir", run]
    assert invoke(args, tmp_path).exit_code == 0
    # A committed run has no checkpoints: verify reads config.json and metrics.csv alone.
    for name in ("checkpoint.pt", "last.pt"):
        (run / name).unlink(missing_ok=True)
    ok = invoke(["verify", run, "--epochs", "2", "--device", "cpu"], tmp_path)
    assert ok.exit_code == 0, ok.output
    assert "reproduced" in " ".join(ok.output.split()) and "val_acc_exit0" in ok.output
    # One line per retrained epoch, as `repro train` prints them, and no more epochs than asked for.
    assert re.search(r"^epoch +1 ", ok.output, re.M) and re.search(r"^epoch +2 ", ok.output, re.M)
    assert not re.search(r"^epoch +3 ", ok.output, re.M)
    # A committed number changed by hand is found.
    rows = rundir.read_csv(run / "metrics.csv")
    rows[1]["val_loss"] = str(float(rows[1]["val_loss"]) + 0.01)
    rundir.write_csv(run / "metrics.csv", rows)
    bad = invoke(["verify", run, "--epochs", "2", "--device", "cpu"], tmp_path)
    assert bad.exit_code == 1 and "did not reproduce" in " ".join(bad.output.split())
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.json", "env.json", "state.json", "metrics.csv", "train.log"])
