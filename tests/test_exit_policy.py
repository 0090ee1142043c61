"""Exit policies fitted on held-out data (repro.exit_policy, `repro fit-gates`): hand-checked pieces, fits
whose answer is known, and the command on hand-made run directories."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_sweep_helpers import make_run, random_split, read_sweep_csv
from typer.testing import CliRunner

from repro import criteria, exit_policy, rundir
from repro.cli import app
from repro.exit_policy import exit_features, fit_policy, halves, lossless_exit_targets, soft_output_objective

runner = CliRunner()
EXIT_MACS = [10.0, 25.0, 45.0, 70.0, 100.0]
PLAIN_MACS = 90.0


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(result) -> str:
    return " ".join(result.output.split())


# ---------------------------------------------------------------------------------------------- pieces


def test_halves_are_disjoint_cover_validation_and_follow_the_seed():
    fit, calibration = halves(11, seed=3)
    assert len(fit) == 6 and len(calibration) == 5
    assert sorted(fit.tolist() + calibration.tolist()) == list(range(11))
    again = halves(11, seed=3)
    assert torch.equal(again[0], fit) and torch.equal(again[1], calibration)
    assert not torch.equal(halves(11, seed=4)[0], fit)


def test_exit_features_by_hand():
    # Two early exits and a final one, two samples, two classes.
    logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]],  # exit 0: p = (0.75, 0.25); (0.5, 0.5)
                           [[0.0, math.log(9.0)], [math.log(4.0), 0.0]],  # exit 1: p = (0.1, 0.9); (0.8, 0.2)
                           [[0.0, 1.0], [1.0, 0.0]]])
    phi = exit_features(logits)
    assert phi.shape == (2, 2, 4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert phi[0, 0].tolist() == pytest.approx([0.75, 0.5, 1 - entropy, 0.0])
    assert phi[0, 1].tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0])
    # Exit 1, sample 0 predicts class 1 where exit 0 predicted 0; sample 1 predicts 0 as exit 0 did (a tie -> 0).
    assert phi[1, :, 0].tolist() == pytest.approx([0.9, 0.8]) and phi[1, :, 3].tolist() == [0.0, 1.0]


def test_the_soft_output_objective_by_hand():
    # One early exit, gate 0.5: the soft probability of the target is 0.5 x 0.8 + 0.5 x 0.4 = 0.6, the
    # expected relative cost 0.5 x 0.3 + 0.5 x 1.0 = 0.65.
    probability = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)  # [exit, class], one sample whose target is class 0
    logits = probability.log()[:, None, :]
    value = soft_output_objective(torch.tensor([[0.5]], dtype=torch.float64), logits, torch.tensor([0]),
                                  torch.tensor([0.3, 1.0], dtype=torch.float64), 0.1)
    assert value.item() == pytest.approx(-math.log(0.6) + 0.1 * 0.65, rel=1e-12)


def test_lossless_exit_targets_by_hand():
    # Targets 0, 1, 0; exit 0 predicts 0, 0, 1; the final exit 1, 1, 1.
    one_hot = torch.eye(2)
    logits = torch.stack([one_hot[[0, 0, 1]], one_hot[[1, 1, 1]]])
    # Sample 0: exit 0 right -> 1. Sample 1: exit 0 wrong, final right -> 0. Sample 2: both wrong -> 1.
    assert lossless_exit_targets(logits, torch.tensor([0, 1, 0])).tolist() == [[1.0, 0.0, 1.0]]


# ---------------------------------------------------------------------------------------------- fits with a known answer


def two_exit_case(n: int = 400, seed: int = 0):
    """Exit 0 is right exactly on the samples where it is confident (top probability above 0.7); the final
    exit is always right. Leaving at exit 0 loses nothing on those samples and everything on the others."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 4, (n,), generator=generator)
    confident = torch.rand(n, generator=generator) < 0.5
    early = torch.randn(n, 4, generator=generator) * 0.1
    wrong = (targets + 1) % 4
    early[torch.arange(n), torch.where(confident, targets, wrong)] += torch.where(confident, 4.0, 0.3)
    final = torch.full((n, 4), -3.0)
    final[torch.arange(n), targets] = 3.0
    return torch.stack([early, final]), targets, confident


@pytest.mark.parametrize("policy", ["gate", "features"])
def test_a_fitted_policy_ranks_the_samples_exit_0_gets_right_above_the_others(policy):
    logits, targets, confident = two_exit_case()
    fitted = fit_policy(policy, logits, targets, torch.tensor([30.0, 100.0]), 100.0, 0.1, seed=0)
    scores = fitted.scores(logits)[0]
    assert scores[confident].min() > scores[~confident].max()
    assert scores[~confident].max() < 0.5 < scores[confident].min()  # and a threshold of 0.5 separates them


def test_the_fitted_gate_with_lambda_0_sends_everything_to_an_exit_that_is_always_right():
    logits, targets, _ = two_exit_case()
    swapped = logits.flip(0)  # now the early exit is always right and the final one mostly wrong
    fitted = fit_policy("gate", swapped, targets, torch.tensor([30.0, 100.0]), 100.0, 0.0, seed=0)
    assert fitted.scores(swapped).min() > 0.95


def test_lambda_makes_the_feature_policy_leave_more_where_leaving_saves():
    # Each exit has its own weights, so lambda must weigh the samples that could leave, not every sample of an
    # exit alike (which once left the fit exactly as it was at any lambda).
    split = random_split(5, 300, 6, seed=3, gates=False)
    scores = {cost_weight: fit_policy("features", split.logits, split.targets, torch.tensor(EXIT_MACS), PLAIN_MACS,
                                      cost_weight, seed=0).scores(split.logits)
              for cost_weight in (0.0, 1.0, 10.0)}
    means = [scores[cost_weight].mean(dim=1) for cost_weight in (0.0, 1.0, 10.0)]
    assert (means[1] > means[0]).all() and (means[2] > means[1]).all()
    # The saving shrinks towards the final exit (here 90 of 90 MACs saved at exit 0, 30 at exit 3): so does the push.
    assert (means[2] - means[0])[0] > (means[2] - means[0])[3]


def test_fitting_is_deterministic():
    split = random_split(5, 300, 6, seed=3, gates=False)
    first = fit_policy("gate", split.logits, split.targets, torch.tensor(EXIT_MACS), PLAIN_MACS, 0.1, seed=0)
    second = fit_policy("gate", split.logits, split.targets, torch.tensor(EXIT_MACS), PLAIN_MACS, 0.1, seed=0)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    loaded = exit_policy.FittedPolicy.from_dict(json.loads(json.dumps(first.to_dict())))  # through the JSON file
    assert torch.equal(loaded.scores(split.logits), first.scores(split.logits))


# ---------------------------------------------------------------------------------------------- the command


@pytest.fixture
def run(tmp_path):
    splits = {"val": random_split(5, 240, 6, seed=21, gates=False), "test": random_split(5, 160, 6, seed=22, gates=False)}
    return make_run(tmp_path / "vgg13-bnet-synthetic-seed0", splits, EXIT_MACS, PLAIN_MACS, method="bnet")


def test_fit_gates_adds_both_policies_to_the_sweep_swept_on_the_half_they_were_not_fitted_on(run):
    assert invoke("sweep", run.path, "--max-drop", 1.0).exit_code == 0
    calibration = json.loads(run.file(rundir.CALIBRATION).read_text())
    result = invoke("fit-gates", run.path)
    assert result.exit_code == 0, result.output
    assert "test accuracy at equal cost" in one_line(result) and "fitted-features" in result.output
    stored = json.loads(run.file(rundir.EXIT_POLICIES).read_text())
    assert sorted(stored["policies"]) == ["fitted-features", "fitted-gate"]
    assert stored["policies"]["fitted-gate"]["fit_samples"] == 120 and stored["policies"]["fitted-gate"]["calibration_samples"] == 120

    rows = read_sweep_csv(run)
    assert {row["criterion"] for row in rows} == {"entropy", "maxprob", "fitted-gate", "fitted-features"}
    outputs = torch.load(run.file(rundir.OUTPUTS), weights_only=True)
    _, held_out = halves(240, seed=0)
    policies = {name: exit_policy.FittedPolicy.from_dict(entry) for name, entry in stored["policies"].items()}
    for row in [r for r in rows if r["criterion"].startswith("fitted-")][::37]:
        split = outputs["splits"][row["split"]]
        logits, targets = split["logits"], split["targets"]
        if row["split"] == "val":  # the threshold is chosen on the half the policy never saw
            logits, targets = logits[:, held_out], targets[held_out]
        scores = policies[row["criterion"]].scores(logits)
        exits, predicted = criteria.select_exits("gate", float(row["threshold"]), logits, scores)
        assert float(row["accuracy"]) == (predicted == targets).double().mean().item()
        assert float(row["mean_macs"]) == pytest.approx(torch.tensor(EXIT_MACS, dtype=torch.float64)[exits].mean().item())
    # The run's operating point is the built-in criteria's, as before: fitting never moves it.
    assert json.loads(run.file(rundir.CALIBRATION).read_text()) == calibration

    again = invoke("sweep", run.path)  # a later sweep keeps the fitted policies in
    assert again.exit_code == 0 and {r["criterion"] for r in read_sweep_csv(run)} >= {"fitted-gate", "fitted-features"}


def test_policies_fitted_on_another_half_than_the_seed_now_cuts_are_refused(run, monkeypatch):
    # Same sizes, other samples (as a PyTorch whose randperm differs would give): the stored digest says so.
    assert invoke("fit-gates", run.path).exit_code == 0
    real = exit_policy.halves
    monkeypatch.setattr(exit_policy, "halves", lambda n, seed: tuple(half.flip(0).roll(1) for half in real(n, seed + 1)))
    result = invoke("sweep", run.path)
    assert result.exit_code == 1 and "fitted on another half of validation" in one_line(result)
    assert "repro fit-gates" in one_line(result) and "Traceback" not in result.output


def test_fit_gates_one_policy_keeps_the_other(run):
    assert invoke("fit-gates", run.path, "--policy", "features").exit_code == 0
    assert invoke("fit-gates", run.path, "--policy", "gate", "--lambda", 0.5).exit_code == 0
    stored = json.loads(run.file(rundir.EXIT_POLICIES).read_text())["policies"]
    assert stored["fitted-gate"]["cost_weight"] == 0.5 and stored["fitted-features"]["cost_weight"] == 0.1


def test_policies_of_another_checkpoint_are_left_out_of_the_sweep(run):
    assert invoke("fit-gates", run.path).exit_code == 0
    data = json.loads(run.file(rundir.EXIT_POLICIES).read_text())
    data["checkpoint_sha256"] = "0" * 64
    run.file(rundir.EXIT_POLICIES).write_text(json.dumps(data))
    assert invoke("sweep", run.path).exit_code == 0
    assert not any(r["criterion"].startswith("fitted-") for r in read_sweep_csv(run))


def test_fit_gates_refuses_what_it_cannot_use_in_one_line(run, tmp_path):
    for args, words in [(["--policy", "oracle"], "policy"), (["--lambda", -1], "--lambda"), (["--lambda", "nan"], "--lambda"),
                        (["--seed", 2**63], "--seed"), (["--seed", -1], "--seed")]:
        result = invoke("fit-gates", run.path, *args)
        assert result.exit_code != 0 and words in one_line(result) and "Traceback" not in result.output
    baseline = make_run(tmp_path / "baseline", {"val": random_split(1, 20, 3, 1, gates=False), "test": random_split(1, 20, 3, 2, gates=False)},
                        [100.0], 100.0, method="baseline")
    result = invoke("fit-gates", baseline.path)
    assert result.exit_code == 1 and "no early exits" in one_line(result)
    run.file(rundir.OUTPUTS).unlink()
    result = invoke("fit-gates", run.path)
    assert result.exit_code == 1 and f"repro eval {run.path}" in one_line(result)
    run.file(rundir.CHECKPOINT).unlink()
    result = invoke("fit-gates", run.path)
    assert result.exit_code == 1 and "train the run again" in one_line(result)


def test_a_damaged_policy_file_is_one_line_and_fit_gates_rewrites_it(run):
    assert invoke("fit-gates", run.path).exit_code == 0
    data = json.loads(run.file(rundir.EXIT_POLICIES).read_text())
    data["policies"]["fitted-gate"]["weight"] = [[1.0]]
    run.file(rundir.EXIT_POLICIES).write_text(json.dumps(data))
    result = invoke("sweep", run.path)
    assert result.exit_code == 1 and "exit_policies.json is damaged" in one_line(result) and "repro fit-gates" in one_line(result)
    assert invoke("fit-gates", run.path).exit_code == 0
    assert invoke("sweep", run.path).exit_code == 0
