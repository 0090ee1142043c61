"""repro.sweep against hand-computed values, an independent per-sample loop, and criteria.select_exits."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_sweep_helpers import random_split

from repro import criteria, sweep
from repro.errors import ReproError
from repro.sweep import SplitOutputs

EXIT_MACS = torch.tensor([10.0, 25.0, 45.0, 70.0, 100.0])  # cumulative, 5 exits
PLAIN_MACS = 90.0


def loop_count(criterion, thresholds, split, exit_macs):
    """Independent reference: walk every sample through the exits in plain Python."""
    score = criteria.scores(criterion, split.logits, split.gates).double().tolist()
    predictions = split.logits.argmax(dim=-1).tolist()
    targets = split.targets.tolist()
    num_exits, n = split.num_exits, split.num_samples
    correct, macs, counts = 0, 0.0, [0] * num_exits
    for i in range(n):
        taken = num_exits - 1
        for b in range(num_exits - 1):
            s, t = score[b][i], float(thresholds[b])
            if (s <= t) if criterion == "entropy" else (s >= t):
                taken = b
                break
        counts[taken] += 1
        macs += float(exit_macs[taken])
        correct += predictions[taken][i] == targets[i]
    return correct / n, macs / n, [c / n for c in counts]


def test_hand_computed_gate_example():
    # 3 exits, 4 samples, 2 classes. Gates at 0.5: sample 0 leaves at exit 0, sample 1 at exit 1,
    # sample 2 at exit 0, sample 3 at the final exit.
    gates = torch.tensor([[0.9, 0.2, 0.6, 0.1], [0.5, 0.7, 0.1, 0.3]])
    targets = torch.tensor([0, 1, 1, 0])
    # Predicted classes per exit (logit of class 1 positive -> class 1).
    predicted = torch.tensor([[0, 0, 0, 1], [1, 1, 0, 1], [0, 1, 1, 0]])
    logits = torch.stack([torch.zeros_like(predicted, dtype=torch.float32), (predicted * 2 - 1).float()], dim=-1)
    split = SplitOutputs(logits, gates, targets)
    points = sweep.operating_points("gate", [0.5], split, torch.tensor([1.0, 2.0, 4.0]), plain_macs=3.0)
    # Taken: s0 exit 0 (pred 0, right), s1 exit 1 (pred 1, right), s2 exit 0 (pred 0, wrong), s3 exit 2 (pred 0, right).
    assert points.accuracy.tolist() == [0.75]
    assert points.exit_fractions.tolist() == [[0.5, 0.25, 0.25]]
    assert points.mean_macs.tolist() == [(1 + 2 + 1 + 4) / 4]
    assert points.macs_speedup.tolist() == [3.0 / 2.0]
    # Threshold 0.95: nobody fires; everyone leaves at the final exit (accuracy of exit 2 = 3/4, cost 4).
    final = sweep.operating_points("gate", [0.95], split, torch.tensor([1.0, 2.0, 4.0]), plain_macs=3.0)
    assert final.exit_fractions.tolist() == [[0.0, 0.0, 1.0]] and final.mean_macs.item() == 4.0


@pytest.mark.parametrize("criterion", criteria.CRITERIA)
def test_sweep_matches_independent_loop(criterion):
    split = random_split(5, 300, 7, seed=1)
    thresholds = [0.0, 0.05, 0.3, 0.5, 0.77, 0.95, 1.0]
    points = sweep.operating_points(criterion, thresholds, split, EXIT_MACS, PLAIN_MACS)
    for t, threshold in enumerate(thresholds):
        accuracy, macs, fractions = loop_count(criterion, [threshold] * 4, split, EXIT_MACS)
        assert points.accuracy[t].item() == accuracy
        assert points.mean_macs[t].item() == pytest.approx(macs, rel=1e-12)
        assert points.exit_fractions[t].tolist() == pytest.approx(fractions, abs=1e-15)
        assert points.macs_speedup[t].item() == pytest.approx(PLAIN_MACS / macs, rel=1e-12)
    # Across the sweep something must actually change, or the comparison above proves little.
    assert len(set(points.accuracy.tolist())) >= 4 and len(set(points.mean_macs.tolist())) >= 4


@pytest.mark.parametrize("criterion,seed", list(itertools.product(criteria.CRITERIA, [0, 1, 2])))
def test_sweep_agrees_with_select_exits(criterion, seed):
    split = random_split(5, 257, 4, seed=seed)
    score = criteria.scores(criterion, split.logits, split.gates)
    # Thresholds equal to observed scores exercise the ties (<= for entropy, >= otherwise).
    generator = torch.Generator().manual_seed(seed)
    picked = score.flatten()[torch.randint(0, score.numel(), (6,), generator=generator)].double().tolist()
    shared = torch.tensor([0.0, 1.0, *picked], dtype=torch.float64)[:, None].expand(-1, 4)
    per_exit = torch.rand(6, 4, generator=generator, dtype=torch.float64)
    matrix = torch.cat([shared, per_exit])
    # Shared thresholds take the sort-based path, per-exit vectors the mask path: check both.
    shared_points = sweep.operating_points(criterion, shared, split, EXIT_MACS, PLAIN_MACS)
    per_exit_points = sweep.operating_points(criterion, per_exit, split, EXIT_MACS, PLAIN_MACS)
    points = sweep.OperatingPoints(
        criterion,
        matrix,
        torch.cat([shared_points.accuracy, per_exit_points.accuracy]),
        torch.cat([shared_points.mean_macs, per_exit_points.mean_macs]),
        torch.cat([shared_points.exit_fractions, per_exit_points.exit_fractions]),
        PLAIN_MACS,
    )
    # The mask path also on the shared rows, where ties with observed scores happen.
    exits = sweep.exits_taken(criterion, score.double(), matrix)
    for t in range(matrix.shape[0]):
        ref_exits, ref_predictions = criteria.select_exits(criterion, matrix[t], split.logits, split.gates)
        assert torch.equal(exits[t], ref_exits)
        assert points.accuracy[t].item() == (ref_predictions == split.targets).double().mean().item()
        counts = torch.bincount(ref_exits, minlength=5).double()
        assert torch.equal(points.exit_fractions[t], counts / 257)
        assert points.mean_macs[t].item() == pytest.approx(EXIT_MACS.double()[ref_exits].mean().item(), rel=1e-12)


def test_both_paths_agree_and_chunking_does_not_change_results(monkeypatch):
    split = random_split(4, 100, 3, seed=3, gates=False)
    shared = torch.linspace(0, 1, 37, dtype=torch.float64)
    # The same shared thresholds written as per-exit vectors, plus one really per-exit vector (so the mask path runs).
    vectors = torch.cat([shared[:, None].expand(-1, 3), torch.tensor([[0.2, 0.5, 0.8]], dtype=torch.float64)])
    fast = sweep.operating_points("entropy", shared, split, EXIT_MACS[:4], PLAIN_MACS)
    whole = sweep.operating_points("entropy", vectors, split, EXIT_MACS[:4], PLAIN_MACS)
    monkeypatch.setattr(sweep, "CHUNK_ELEMENTS", 250)  # 2 threshold vectors per chunk
    chunked = sweep.operating_points("entropy", vectors, split, EXIT_MACS[:4], PLAIN_MACS)
    assert torch.equal(fast.accuracy, whole.accuracy[:37]) and torch.equal(fast.exit_fractions, whole.exit_fractions[:37])
    assert torch.equal(whole.accuracy, chunked.accuracy) and torch.equal(whole.exit_fractions, chunked.exit_fractions)


def test_a_single_exit_sends_everyone_to_the_final_classifier():
    split = random_split(1, 50, 4, seed=2, gates=False)
    points = sweep.operating_points("maxprob", [0.0, 0.5], split, torch.tensor([7.0]), 7.0)
    assert points.exit_fractions.tolist() == [[1.0], [1.0]] and points.mean_macs.tolist() == [7.0, 7.0]
    assert points.accuracy.tolist() == [split.exit_accuracy()[0].item()] * 2


def test_pareto_flags_on_hand_made_front():
    accuracy = torch.tensor([0.90, 0.80, 0.85, 0.70, 0.90, 0.80, 0.95, 0.60])
    cost = torch.tensor([10.0, 5.0, 8.0, 5.0, 12.0, 5.0, 20.0, 4.0])
    # (0.7, 5) loses to (0.8, 5); (0.9, 12) loses to (0.9, 10); the two identical (0.8, 5) both stay.
    expected = [True, True, True, False, False, True, True, True]
    assert sweep.pareto_front(accuracy, cost).tolist() == expected


def test_pareto_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    # Coarse values make ties in accuracy and in cost common.
    accuracy = torch.randint(0, 8, (300,), generator=generator).double() / 8
    cost = torch.randint(0, 8, (300,), generator=generator).double()
    flags = sweep.pareto_front(accuracy, cost).tolist()
    for i in range(300):
        dominated = any(
            accuracy[j] >= accuracy[i] and cost[j] <= cost[i] and (accuracy[j] > accuracy[i] or cost[j] < cost[i]) for j in range(300)
        )
        assert flags[i] == (not dominated)
    assert 0 < sum(flags) < 300


def test_threshold_grid_uses_quantiles_and_range_ends():
    split = random_split(5, 400, 10, seed=4)
    grid = sweep.threshold_grid("entropy", split, count=21)
    score = criteria.scores("entropy", split.logits).double().flatten()
    assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
    assert torch.all(grid[1:] > grid[:-1]) and len(grid) <= 21
    inner = grid[1:-1]
    assert all(bool((score == value).any()) for value in inner)  # every inner threshold is an observed score
    # The median of the scores is among them (level 0.5 of 19 evenly spaced levels).
    assert score.sort().values[round(0.5 * (score.numel() - 1))].item() in inner.tolist()
    with pytest.raises(ReproError, match="at least 2"):
        sweep.threshold_grid("entropy", split, count=1)


def test_thresholds_out_of_range_and_wrong_length_are_refused():
    split = random_split(5, 10, 3, seed=0)
    with pytest.raises(ReproError, match="outside"):
        sweep.operating_points("maxprob", [0.5, 1.2], split, EXIT_MACS, PLAIN_MACS)
    with pytest.raises(ReproError, match="4 early exits"):
        sweep.operating_points("maxprob", [[0.5, 0.5]], split, EXIT_MACS, PLAIN_MACS)
    with pytest.raises(ReproError, match="gates"):
        sweep.operating_points("gate", [0.5], SplitOutputs(split.logits, None, split.targets), EXIT_MACS, PLAIN_MACS)


def two_exit_split(early_correct: list[bool], gates: list[float]) -> SplitOutputs:
    """2 exits, 2 classes, target 0 everywhere; the final exit is always right."""
    n = len(gates)
    early = torch.tensor([[1.0, 0.0] if ok else [0.0, 1.0] for ok in early_correct])
    final = torch.tensor([[1.0, 0.0]] * n)
    return SplitOutputs(torch.stack([early, final]), torch.tensor([gates]), torch.zeros(n, dtype=torch.long))


def test_calibration_follows_val_never_test():
    # On val the early exit is right whenever its gate is high; on test the same gates are always wrong.
    gates = [0.95, 0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1]
    val = two_exit_split([True, True, True, True, False, False, False, False], gates)
    test_bad = two_exit_split([False] * 8, gates)
    test_good = two_exit_split([True] * 8, gates)
    macs = torch.tensor([20.0, 100.0])
    thresholds = torch.tensor([0.05, 0.25, 0.5, 0.65, 0.75, 0.85, 0.92, 0.99], dtype=torch.float64)
    chosen = []
    for test in (test_bad, test_good):
        splits = {"val": val, "test": test}
        val_points = sweep.operating_points("gate", thresholds, val, macs, 100.0)
        chosen.append(sweep.calibrate([val_points], splits, macs, {"max_drop": 0.0}))
    # Val: the cheapest point with no accuracy loss is gate >= 0.65 (4 early, all right): (4*20+4*100)/8 = 60 MACs.
    for calibration in chosen:
        assert calibration.thresholds == [0.65]
        assert calibration.val == {"accuracy": 1.0, "exit_fractions": [0.5, 0.5], "mean_macs": 60.0, "macs_speedup": 100.0 / 60.0}
    # ...and test is only reported at that threshold: 4 of 8 leave early, wrong on one test set, right on the other.
    assert chosen[0].test["accuracy"] == 0.5 and chosen[1].test["accuracy"] == 1.0
    assert chosen[0].test["exit_fractions"] == [0.5, 0.5]


def test_budget_picks_most_accurate_affordable_point_on_val():
    gates = [0.95, 0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1]
    val = two_exit_split([True, True, False, True, False, False, True, False], gates)
    macs = torch.tensor([20.0, 100.0])
    thresholds = torch.tensor([0.05, 0.25, 0.5, 0.65, 0.75, 0.85, 0.92, 0.99], dtype=torch.float64)
    val_points = sweep.operating_points("gate", thresholds, val, macs, 100.0)
    splits = {"val": val, "test": two_exit_split([False] * 8, gates)}
    # Budget 0.7 x 100 MACs = 70 MACs: the affordable thresholds are 0.05 .. 0.75.
    calibration = sweep.calibrate([val_points], splits, macs, {"budget": 0.7})
    affordable = [t for t in range(8) if val_points.mean_macs[t] <= 70.0]
    best = max(affordable, key=lambda t: (val_points.accuracy[t].item(), -val_points.mean_macs[t].item()))
    assert calibration.thresholds == [thresholds[best].item()]
    # By hand: 0.65 sends samples 0-3 early (3 right) -> 7/8 at (4*20+4*100)/8 = 60 MACs; 0.75 also gives 7/8
    # (samples 0-2 early, 2 right) but at 70 MACs, so the tie goes to the cheaper 0.65.
    assert calibration.thresholds == [0.65] and calibration.val["accuracy"] == 7 / 8 and calibration.val["mean_macs"] == 60.0
    with pytest.raises(ReproError, match=r"cheapest reachable point on val is gate threshold 0.05: 0.200 x plain"):
        sweep.calibrate([val_points], splits, macs, {"budget": 0.1})


def test_calibration_chooses_across_criteria():
    split = random_split(5, 400, 6, seed=5)
    splits = {"val": split, "test": random_split(5, 400, 6, seed=6)}
    points = [sweep.operating_points(c, sweep.threshold_grid(c, split, 51), split, EXIT_MACS, PLAIN_MACS) for c in criteria.CRITERIA]
    calibration = sweep.calibrate(points, splits, EXIT_MACS, {"max_drop": 2.0})
    floor = split.exit_accuracy()[-1].item() - 0.02
    cheapest = min(p.mean_macs[p.accuracy >= floor - 1e-12].min().item() for p in points)
    assert calibration.val["mean_macs"] == cheapest and calibration.val["accuracy"] >= floor - 1e-12


def test_sweep_outputs_fits_grid_on_val_only():
    val = random_split(5, 200, 5, seed=7)
    results = []
    for seed in (8, 9):
        splits = {"val": val, "test": random_split(5, 200, 5, seed=seed)}
        results.append(sweep.sweep_outputs(splits, EXIT_MACS, PLAIN_MACS, "all", count=31, target={"max_drop": 1.0}))
    for key in results[0].points:
        assert torch.equal(results[0].points[key].thresholds, results[1].points[key].thresholds)
    assert results[0].calibration.thresholds == results[1].calibration.thresholds
    assert results[0].calibration.val == results[1].calibration.val
    assert results[0].calibration.test != results[1].calibration.test


def test_unmeetable_max_drop_and_bad_targets():
    with pytest.raises(ReproError, match="not both"):
        sweep.check_target(1.0, 0.5)
    with pytest.raises(ReproError, match=">= 0"):
        sweep.check_target(-1.0, None)
    with pytest.raises(ReproError, match="> 0"):
        sweep.check_target(None, 0.0)
    # Every early exit is wrong and the final exit right: a max drop of 0 needs thresholds that fire
    # nobody, and gate >= 0.05 fires everybody.
    val = two_exit_split([False] * 4, [0.5, 0.6, 0.7, 0.8])
    points = sweep.operating_points("gate", [0.05], val, torch.tensor([20.0, 100.0]), 100.0)
    with pytest.raises(ReproError, match=r"within 0 points of the final exit \(100.00%\)"):
        sweep.calibrate([points], {"val": val, "test": val}, torch.tensor([20.0, 100.0]), {"max_drop": 0.0})


def test_parse_thresholds():
    from repro.commands.sweep import parse_thresholds

    def matrix(threshold_list, per_exit, early_exits=3):
        return sweep.threshold_matrix(parse_thresholds(threshold_list, per_exit), early_exits)

    assert matrix("0.1, 0.2", None).tolist() == [[0.1] * 3, [0.2] * 3]
    assert matrix(None, "0.1,0.2,0.3;0.4,0.5,0.6").tolist() == [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    assert parse_thresholds(None, None) is None
    with pytest.raises(ReproError, match="got 2 thresholds for 3 early exits"):
        matrix(None, "0.1,0.2")
    with pytest.raises(ReproError, match="differ in length"):
        parse_thresholds(None, "0.1,0.2;0.1")
    with pytest.raises(ReproError, match="comma-separated"):
        parse_thresholds("a,b", None)
    with pytest.raises(ReproError, match="outside"):
        matrix("-0.1", None)
