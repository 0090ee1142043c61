"""Exit criteria and the run-everything-then-select reference, against hand-computed values."""

import math

import pytest
import torch

from repro import criteria
from repro.criteria import fires, scores
from repro.errors import ReproError, UnknownNameError


def test_normalised_entropy_extremes_and_a_hand_value():
    uniform = torch.zeros(1, 4)
    assert criteria.normalised_entropy(uniform).item() == pytest.approx(1.0)
    peaked = torch.tensor([[100.0, 0.0, 0.0, 0.0]])
    assert criteria.normalised_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    # softmax([log 3, 0]) = [0.75, 0.25]; H = -(0.75 ln 0.75 + 0.25 ln 0.25) / ln 2
    two = torch.tensor([[math.log(3.0), 0.0]])
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert criteria.normalised_entropy(two).item() == pytest.approx(expected, rel=1e-6)


def test_max_probability_hand_value():
    logits = torch.tensor([[math.log(3.0), 0.0]])
    assert criteria.max_probability(logits).item() == pytest.approx(0.75)


def test_select_exits_hand_made():
    # 3 exits (2 early + final), 4 samples, 2 classes. Probabilities of class 0 per exit:
    p0 = torch.tensor([[0.95, 0.60, 0.08, 0.55], [0.50, 0.99, 0.20, 0.52], [0.30, 0.40, 0.80, 0.90]])
    logits = torch.stack([torch.log(p0), torch.log(1 - p0)], dim=-1)
    exits, predictions = criteria.select_exits("maxprob", 0.9, logits)
    # sample 0 leaves at exit 0 (0.95), 1 at exit 1 (0.99), 2 at exit 0 (max(0.08, 0.92) = 0.92), 3 never fires -> final.
    assert exits.tolist() == [0, 1, 0, 2]
    assert predictions.tolist() == [0, 0, 1, 0]


def test_select_exits_per_exit_thresholds_and_gates():
    logits = torch.randn(3, 5, 4)
    gates = torch.tensor([[0.9, 0.1, 0.5, 0.2, 0.7], [0.0, 0.8, 0.6, 0.1, 0.9]])
    exits, _ = criteria.select_exits("gate", [0.7, 0.6], logits, gates)
    # Compared exactly in float64: the float32 gate 0.6 (0.60000002) fires at 0.6, while the float32
    # gate 0.7 (0.69999999) does not fire at 0.7, so sample 4 leaves at exit 1 (0.9 >= 0.6).
    assert exits.tolist() == [0, 1, 1, 2, 1]


def test_entropy_fires_at_or_below_and_others_at_or_above():
    score = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    assert criteria.fires("entropy", score, 0.5).tolist() == [True, True, False]
    assert criteria.fires("maxprob", score, 0.5).tolist() == [False, True, True]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_threshold_out_of_range(bad):
    with pytest.raises(ReproError, match="outside"):
        criteria.check_thresholds(bad, 3)


@pytest.mark.parametrize("given", [0.3, 1, [0.1, 0.2, 0.3], (0.0, 1.0, 0.5), [0.4], torch.tensor(0.25),
                                   torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32), True, [True, 0, 1]])
def test_threshold_list_reads_numbers_and_sequences_as_the_tensor_path_does(given):
    # The batch-1 path reads numbers and lists without a tensor; the result must be torch.as_tensor's.
    expected = torch.as_tensor(given, dtype=torch.float64).flatten()
    expected = expected.expand(3).clone() if expected.numel() == 1 else expected
    assert criteria.threshold_list(given, 3) == expected.tolist()
    assert torch.equal(criteria.check_thresholds(given, 3), expected)


def test_threshold_list_for_a_network_without_early_exits():
    assert criteria.threshold_list([], 0) == [] and criteria.threshold_list(0.5, 0) == []
    with pytest.raises(ReproError, match="2 thresholds for 0 early exits"):
        criteria.threshold_list([0.1, 0.2], 0)


def test_threshold_count_mismatch():
    with pytest.raises(ValueError, match="2 thresholds for 3 early exits"):
        criteria.check_thresholds([0.1, 0.2], 3)


def test_unknown_criterion_and_gate_without_gates():
    with pytest.raises(UnknownNameError, match="valid: entropy, gate, maxprob"):
        criteria.select_exits("nope", 0.5, torch.randn(2, 3, 4))
    with pytest.raises(ReproError, match="needs a model with learned gates"):
        criteria.select_exits("gate", 0.5, torch.randn(2, 3, 4), None)


@pytest.mark.parametrize("criterion", ["entropy", "maxprob", "gate"])
def test_a_threshold_just_above_a_float32_score_is_decided_in_float64(criterion):
    # The next float64 after a float32 score rounds back to that score in float32, so a float32 comparison
    # would call it equal; every path compares in float64, where it is strictly above.
    score = torch.tensor([0.3], dtype=torch.float32)
    threshold = torch.nextafter(score.double(), torch.tensor(2.0, dtype=torch.float64)).item()
    assert float(torch.tensor(threshold, dtype=torch.float32)) == float(score)
    fired = criteria.fires(criterion, score, threshold).item()
    assert fired is (criterion == "entropy")  # entropy fires at or below t; the others at or above
    gates = score[None] if criterion == "gate" else None
    logits = torch.zeros(2, 1, 3)  # one early exit, one sample
    if criterion != "gate":  # make the exit's own score equal 0.3 exactly as computed
        logits = torch.randn(2, 1, 3)
        score = criteria.scores(criterion, logits, None)[0]
        threshold = torch.nextafter(score.double(), torch.tensor(2.0, dtype=torch.float64)).item()
    exits, _ = criteria.select_exits(criterion, threshold, logits, gates)
    assert exits.tolist() == ([0] if criterion == "entropy" else [1])


@pytest.mark.parametrize("criterion", ["entropy", "maxprob"])
def test_the_batch1_decision_is_the_reference_one_even_at_ties(criterion):
    from repro.criteria import fires_one

    generator = torch.Generator().manual_seed(7)
    for classes in (2, 10, 100):
        logits = torch.randn(200, classes, generator=generator) * torch.rand(200, 1, generator=generator) * 8
        exact = scores(criterion, logits)
        # Thresholds at every sample's own score (a tie: the guard hands it to the reference), just beside
        # it in either direction, and at random places.
        for threshold in (*exact[:50].tolist(), *(exact[50:100] + 1e-12).tolist(), *(exact[100:150] - 1e-12).tolist(),
                          *torch.rand(50, generator=generator, dtype=torch.float64).tolist()):
            reference = fires(criterion, exact, threshold)
            for n in range(0, 200, 37):
                assert fires_one(criterion, logits[n : n + 1], threshold) == bool(reference[n])
