"""`repro sweep` through the CLI on hand-made run directories: files written, numbers, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from test_sweep_helpers import make_run, random_split, read_sweep_csv
from typer.testing import CliRunner

from repro import criteria, rundir
from repro.cli import app
from repro.rundir import SWEEP_SOURCE
from repro.artifacts import sweep_checkpoint
from repro.sweep import SplitOutputs

runner = CliRunner()
EXIT_MACS = [10.0, 25.0, 45.0, 70.0, 100.0]
PLAIN_MACS = 90.0


@pytest.fixture
def run(tmp_path):
    splits = {"val": random_split(5, 200, 6, seed=11), "test": random_split(5, 150, 6, seed=12)}
    return make_run(tmp_path / "vgg13-proposed-synthetic-seed0", splits, EXIT_MACS, PLAIN_MACS)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sweep_writes_csv_and_calibration(run):
    result = invoke("sweep", run.path, "--thresholds", 21, "--max-drop", 1.0)
    assert result.exit_code == 0, result.output
    assert "Pareto points on val" in result.output
    rows = read_sweep_csv(run)
    header = run.file(rundir.SWEEP).read_text().splitlines()[0].split(",")
    assert header == ["split", "criterion", "threshold", "accuracy", "mean_macs", "macs_speedup", "exit_fractions", "pareto"]
    assert {(r["split"], r["criterion"]) for r in rows} == {(s, c) for s in ("val", "test") for c in criteria.CRITERIA}
    outputs = torch.load(run.file(rundir.OUTPUTS), weights_only=True)
    for row in rows[:: max(1, len(rows) // 25)]:
        split = outputs["splits"][row["split"]]
        threshold = float(row["threshold"])
        exits, predictions = criteria.select_exits(row["criterion"], threshold, split["logits"], split["gates"])
        assert float(row["accuracy"]) == (predictions == split["targets"]).double().mean().item()
        mean_macs = torch.tensor(EXIT_MACS, dtype=torch.float64)[exits].mean().item()
        assert float(row["mean_macs"]) == pytest.approx(mean_macs, rel=1e-12)
        assert float(row["macs_speedup"]) == pytest.approx(PLAIN_MACS / mean_macs, rel=1e-12)
        assert row["exit_fractions"] == pytest.approx((torch.bincount(exits, minlength=5) / exits.numel()).tolist())
        assert row["pareto"] in ("true", "false")
    calibration = json.loads(run.file(rundir.CALIBRATION).read_text())
    assert set(calibration) == {"criterion", "target", "thresholds", "val", "test", "checkpoint_sha256"}
    # Both record the checkpoint swept (sweep.csv, whose columns are fixed, through its sidecar).
    sha256 = rundir.file_sha256(run.file(rundir.CHECKPOINT))
    assert calibration["checkpoint_sha256"] == sha256 == outputs["checkpoint_sha256"]
    assert sweep_checkpoint(run) == sha256
    assert calibration["target"] == {"max_drop": 1.0} and len(calibration["thresholds"]) == 4
    # The calibrated point is one of the val rows, within 1 point of the final exit's val accuracy.
    final_val = (outputs["splits"]["val"]["logits"][-1].argmax(-1) == outputs["splits"]["val"]["targets"]).double().mean().item()
    assert calibration["val"]["accuracy"] >= final_val - 0.01 - 1e-12
    val_rows = [r for r in rows if r["split"] == "val" and r["criterion"] == calibration["criterion"]]
    assert any(float(r["threshold"]) == calibration["thresholds"][0] and float(r["mean_macs"]) == calibration["val"]["mean_macs"] for r in val_rows)


def test_sweep_source_names_the_checkpoint_and_the_csv(run):
    result = invoke("sweep", run.path, "--thresholds", 5)
    assert result.exit_code == 0, result.output
    assert str(run.file(SWEEP_SOURCE)) in "".join(result.output.split())  # rich folds long paths anywhere
    source = json.loads(run.file(SWEEP_SOURCE).read_text())
    assert source == {"checkpoint_sha256": rundir.file_sha256(run.file(rundir.CHECKPOINT)),
                      "sweep_sha256": rundir.file_sha256(run.file(rundir.SWEEP))}
    # A sweep.csv the sidecar was not written for (edited, or by an older repro), or no sidecar: origin unknown.
    run.file(rundir.SWEEP).write_text(run.file(rundir.SWEEP).read_text() + "\n")
    assert sweep_checkpoint(run) is None
    run.file(SWEEP_SOURCE).unlink()
    assert sweep_checkpoint(run) is None
    run.file(SWEEP_SOURCE).write_text("{not json")
    assert sweep_checkpoint(run) is None


def test_explicit_and_per_exit_thresholds(run):
    result = invoke("sweep", run.path, "--criterion", "maxprob", "--threshold-list", "0.2,0.9")
    assert result.exit_code == 0, result.output
    rows = read_sweep_csv(run)
    assert [(r["split"], r["threshold"]) for r in rows] == [("val", "0.2"), ("val", "0.9"), ("test", "0.2"), ("test", "0.9")]
    assert not run.has(rundir.CALIBRATION)
    result = invoke("sweep", run.path, "-c", "entropy", "--per-exit", "0.1,0.2,0.3,0.4;0.5,0.5,0.5,0.5")
    assert result.exit_code == 0, result.output
    rows = read_sweep_csv(run)
    assert json.loads(rows[0]["threshold"]) == [0.1, 0.2, 0.3, 0.4] and rows[1]["threshold"] == "0.5"


def test_budget_calibration_and_unmeetable_budget(run):
    result = invoke("sweep", run.path, "--thresholds", 21, "--budget", 0.6)
    assert result.exit_code == 0, result.output
    calibration = json.loads(run.file(rundir.CALIBRATION).read_text())
    assert calibration["target"] == {"budget": 0.6} and calibration["val"]["mean_macs"] <= 0.6 * PLAIN_MACS
    # The cheapest any threshold can be is exit 0 for everyone: 10 MACs = 0.111 x plain.
    result = invoke("sweep", run.path, "--budget", 0.05)
    assert result.exit_code == 1
    assert "cheapest reachable point on val" in result.output and "0.111 x plain" in result.output


def test_folder_of_runs(tmp_path, run):
    other = make_run(tmp_path / "b", {"val": random_split(3, 50, 3, 1, gates=False), "test": random_split(3, 40, 3, 2, gates=False)}, [1, 2, 3], 2.5, "bnet")
    result = invoke("sweep", tmp_path, "--thresholds", 5)
    assert result.exit_code == 0, result.output
    assert run.has(rundir.SWEEP) and other.has(rundir.SWEEP)
    assert {r["criterion"] for r in read_sweep_csv(other)} == {"entropy", "maxprob"}  # no gates, no gate sweep


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--criterion", "depth"], 2, "unknown criterion 'depth'"),
        (["--threshold-list", "0.5,1.5"], 1, "outside [0.0, 1.0]"),
        (["--per-exit", "0.5,0.5"], 1, "got 2 thresholds for 4 early exits"),
        (["--max-drop", "1", "--budget", "0.5"], 1, "not both"),
        (["--thresholds", "1"], 1, "at least 2"),
        (["--thresholds", "5", "--threshold-list", "0.5"], 1, "not both"),
    ],
)
def test_bad_options(run, args, code, message):
    result = invoke("sweep", run.path, *args)
    assert result.exit_code == code
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_gate_on_a_run_without_gates(tmp_path):
    splits = {name: random_split(3, 30, 3, seed, gates=False) for seed, name in enumerate(("val", "test"))}
    run = make_run(tmp_path / "bnet", splits, [1.0, 2.0, 3.0], 2.5, "bnet")
    result = invoke("sweep", run.path, "--criterion", "gate")
    assert result.exit_code == 1 and "needs a model with learned gates" in result.output


def test_missing_and_stale_outputs(run, tmp_path):
    # Retrained: checkpoint.pt no longer matches the checkpoint outputs.pt was computed from.
    rundir.save_torch(run.file(rundir.CHECKPOINT), {"model": {"weight": torch.zeros(4)}, "epoch": 2})
    result = invoke("sweep", run.path)
    assert result.exit_code == 1
    assert "another checkpoint" in result.output and f"repro eval {run.path}" in " ".join(result.output.split())
    run.file(rundir.OUTPUTS).unlink()
    result = invoke("sweep", run.path)
    assert result.exit_code == 1 and "has no outputs.pt; recompute it with `repro eval" in " ".join(result.output.split())
    result = invoke("sweep", tmp_path / "nowhere")
    assert result.exit_code == 1 and "does not exist" in result.output


def test_corrupt_outputs_and_baseline_run(tmp_path):
    splits = {name: random_split(3, 30, 3, seed) for seed, name in enumerate(("val", "test"))}
    run = make_run(tmp_path / "corrupt", splits, [1.0, 2.0, 3.0], 2.5)
    run.file(rundir.OUTPUTS).write_bytes(b"not a torch file")
    result = invoke("sweep", run.path)
    assert result.exit_code == 1 and "corrupt" in result.output
    one_exit = {name: SplitOutputs(s.logits[-1:], None, s.targets) for name, s in splits.items()}
    baseline = make_run(tmp_path / "baseline", one_exit, [3.0], 3.0, "baseline")
    result = invoke("sweep", baseline.path)
    assert result.exit_code == 1 and "no early exits" in result.output
