"""Losses of every training method against numbers worked out by hand on 2- and 3-exit toys.

The expected values are written out with `math` on plain floats (softmax, entropy and the mixtures by
hand), never by calling repro.methods, so a wrong formula in the library cannot agree with itself.
"""

import math
from typing import NamedTuple

import pytest
import torch

from repro.errors import ReproError, UnknownNameError
from repro.methods import LITERAL_LOSS, get_method, is_literal_loss, list_methods, method_defaults


class Out(NamedTuple):
    logits: list
    gates: list


class OutWithLogits(NamedTuple):
    logits: list
    gates: list
    gate_logits: list


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def normalised_entropy(values):
    p = softmax(values)
    return -sum(q * math.log(q) for q in p) / math.log(len(p))


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# Two exits, one sample, two classes: f0 = [2, 0], f1 = [0, 1], gate 0.25, target 0, costs [0.4, 1].
TWO = Out(logits=[t([[2.0, 0.0]]), t([[0.0, 1.0]])], gates=[t([0.25])])
TWO_TARGETS = torch.tensor([0])
TWO_COSTS = torch.tensor([0.4, 1.0])


def test_registry_lists_the_five_methods():
    assert list_methods() == ["baseline", "bnet", "proposed", "report-proposed", "report-maxprob"]
    assert [get_method(m).criterion for m in list_methods()] == [None, "entropy", "gate", "entropy", "maxprob"]
    assert [get_method(m).uses_exits for m in list_methods()] == [False, True, True, True, True]


def test_proposed_two_exits_probability_mix_and_cost():
    # softmax([2, 0])[0] = e^2 / (e^2 + 1) = 0.8807971; softmax([0, 1])[0] = 1 / (1 + e) = 0.2689414
    p0, p1 = math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)
    soft = 0.25 * p0 + 0.75 * p1  # 0.4219053
    cost = 0.25 * 0.4 + 0.75 * 1.0  # 0.85
    expected = -math.log(soft) + 0.1 * cost
    assert expected == pytest.approx(0.9479743, abs=1e-6)
    loss, terms = get_method("proposed", joint_weight=0.0, cost_weight=0.1).loss(TWO, TWO_TARGETS, TWO_COSTS)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert terms["soft_nll"] == pytest.approx(-math.log(soft), abs=1e-5)
    assert terms["cost_vs_final"] == pytest.approx(0.85, abs=1e-6)
    assert terms["ce_exit0"] == pytest.approx(-math.log(p0), abs=1e-5)


def test_proposed_uses_the_gate_logit_when_the_model_exposes_it():
    z = math.log(0.25 / 0.75)  # sigmoid(z) = 0.25
    out = OutWithLogits(TWO.logits, TWO.gates, gate_logits=[t([z])])
    method = get_method("proposed", joint_weight=0.0, cost_weight=0.1)
    a = method.loss(out, TWO_TARGETS, TWO_COSTS)[0].item()
    b = method.loss(TWO, TWO_TARGETS, TWO_COSTS)[0].item()
    assert a == pytest.approx(b, abs=1e-6)


def test_proposed_two_exits_logit_mix():
    # f~0 = 0.25 * [2, 0] + 0.75 * [0, 1] = [0.5, 0.75]; NLL of class 0 = log(1 + e^0.25) = 0.8259394
    expected = math.log(1 + math.exp(0.25))
    method = get_method("proposed", joint_weight=0.0, mix="logits", cost_weight=0.0)
    loss, terms = method.loss(TWO, TWO_TARGETS, TWO_COSTS)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(0.8259394, abs=1e-6)
    probs = method.method_probs(TWO)
    assert probs[0, 0].item() == pytest.approx(math.exp(0.5) / (math.exp(0.5) + math.exp(0.75)), abs=1e-6)


def test_proposed_joint_weight_adds_per_exit_cross_entropy():
    p0, p1 = math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)
    soft = 0.25 * p0 + 0.75 * p1
    expected = -math.log(soft) + 0.5 * 0.85 + 2.0 * (-math.log(p0) - math.log(p1))
    loss, _ = get_method("proposed", cost_weight=0.5, joint_weight=2.0).loss(TWO, TWO_TARGETS, TWO_COSTS)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


# Three exits, two samples, three classes, costs [0.2, 0.5, 1].
THREE_LOGITS = [
    [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]],
    [[0.5, 0.5, 0.0], [-1.0, 1.0, 3.0]],
    [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]],
]
THREE_GATES = [[0.6, 0.1], [0.3, 0.8]]
THREE_TARGETS = [2, 1]
THREE_COSTS = [0.2, 0.5, 1.0]
THREE = Out(logits=[t(x) for x in THREE_LOGITS], gates=[t(g) for g in THREE_GATES])


def three_by_hand(gates, mix="probs"):
    """Soft-output NLL and expected cost per sample, written out exit by exit."""
    nlls, costs = [], []
    for n, y in enumerate(THREE_TARGETS):
        g0, g1 = gates[0][n], gates[1][n]
        f0, f1, f2 = (THREE_LOGITS[b][n] for b in range(3))
        if mix == "probs":
            p0, p1, p2 = softmax(f0), softmax(f1), softmax(f2)
            soft2 = p2
            soft1 = [g1 * a + (1 - g1) * b for a, b in zip(p1, soft2)]
            soft0 = [g0 * a + (1 - g0) * b for a, b in zip(p0, soft1)]
        else:
            soft1 = [g1 * a + (1 - g1) * b for a, b in zip(f1, f2)]
            soft0 = softmax([g0 * a + (1 - g0) * b for a, b in zip(f0, soft1)])
        nlls.append(-math.log(soft0[y]))
        cost1 = g1 * THREE_COSTS[1] + (1 - g1) * 1.0
        costs.append(g0 * THREE_COSTS[0] + (1 - g0) * cost1)
    return sum(nlls) / 2, sum(costs) / 2


def test_proposed_three_exits_matches_hand_computation():
    nll, cost = three_by_hand(THREE_GATES)
    # sample 0: C~ = 0.6*0.2 + 0.4*(0.3*0.5 + 0.7) = 0.46; sample 1: 0.1*0.2 + 0.9*(0.8*0.5 + 0.2) = 0.56
    assert cost == pytest.approx((0.46 + 0.56) / 2)
    loss, terms = get_method("proposed", joint_weight=0.0, cost_weight=0.3).loss(THREE, torch.tensor(THREE_TARGETS), torch.tensor(THREE_COSTS))
    assert terms["soft_nll"] == pytest.approx(nll, abs=1e-5)
    assert terms["cost_vs_final"] == pytest.approx(0.51, abs=1e-6)
    assert loss.item() == pytest.approx(nll + 0.3 * 0.51, abs=1e-5)


def test_proposed_three_exits_logit_mix():
    nll, _ = three_by_hand(THREE_GATES, mix="logits")
    loss, _ = get_method("proposed", joint_weight=0.0, mix="logits", cost_weight=0.0).loss(THREE, torch.tensor(THREE_TARGETS), torch.tensor(THREE_COSTS))
    assert loss.item() == pytest.approx(nll, abs=1e-5)


def test_method_probs_of_proposed_is_the_soft_output():
    probs = get_method("proposed").method_probs(THREE)
    p0, p1, p2 = softmax(THREE_LOGITS[0][0]), softmax(THREE_LOGITS[1][0]), softmax(THREE_LOGITS[2][0])
    soft1 = [0.3 * a + 0.7 * b for a, b in zip(p1, p2)]
    soft0 = [0.6 * a + 0.4 * b for a, b in zip(p0, soft1)]
    assert probs[0].tolist() == pytest.approx(soft0, abs=1e-6)
    assert probs.sum(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_probability_mix_does_not_underflow():
    # Every exit is certain of the wrong class: p(target) = e^-200 in every exit, so NLL = 200 exactly;
    # mixing probabilities outside log space would give log(0) = inf in float32.
    wrong = t([[100.0, -100.0]])
    out = Out(logits=[wrong, wrong, wrong], gates=[t([0.5]), t([0.5])])
    loss, _ = get_method("proposed", joint_weight=0.0, cost_weight=0.0).loss(out, torch.tensor([1]), torch.tensor([0.3, 0.6, 1.0]))
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(200.0, rel=1e-5)


def test_bnet_weighted_sum_of_exit_cross_entropies():
    ce0 = math.log(1 + math.exp(-2))  # -log softmax([2, 0])[0] = 0.1269280
    ce1 = math.log(1 + math.e)  # -log softmax([0, 1])[0] = 1.3132617
    loss, terms = get_method("bnet").loss(TWO, TWO_TARGETS, TWO_COSTS)
    assert loss.item() == pytest.approx(ce0 + ce1, abs=1e-5)
    loss, _ = get_method("bnet", alphas=[0.5, 2.0]).loss(TWO, TWO_TARGETS, TWO_COSTS)
    assert loss.item() == pytest.approx(0.5 * ce0 + 2.0 * ce1, abs=1e-5)
    assert terms == pytest.approx({"ce_exit0": ce0, "ce_exit1": ce1}, abs=1e-5)
    # bnet's own output is the final exit.
    assert get_method("bnet").method_probs(TWO)[0].tolist() == pytest.approx(softmax([0.0, 1.0]), abs=1e-6)


def test_bnet_refuses_alphas_of_the_wrong_length():
    with pytest.raises(ReproError, match="3 alphas for a model with 2 exits"):
        get_method("bnet", alphas=[1, 1, 1]).loss(TWO, TWO_TARGETS, TWO_COSTS)


def test_baseline_is_cross_entropy_of_the_final_output():
    out = Out(logits=[t([[0.0, 1.0]])], gates=[])
    loss, _ = get_method("baseline").loss(out, TWO_TARGETS, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.e), abs=1e-5)


def test_label_smoothing_by_hand():
    # eps = 0.1, 2 classes: 0.9 * (-log p_y) + 0.1 * mean_c(-log p_c)
    p = softmax([0.0, 1.0])
    expected = 0.9 * -math.log(p[0]) + 0.1 * (-math.log(p[0]) - math.log(p[1])) / 2
    out = Out(logits=[t([[0.0, 1.0]])], gates=[])
    loss, _ = get_method("baseline", label_smoothing=0.1).loss(out, TWO_TARGETS, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_report_proposed_gate_is_one_minus_normalised_entropy():
    g = 1 - normalised_entropy([2.0, 0.0])  # 1 - 0.5270653 = 0.4729347
    assert g == pytest.approx(0.4729347, abs=1e-6)
    p0, p1 = softmax([2.0, 0.0]), softmax([0.0, 1.0])
    soft_nll = -math.log(g * p0[0] + (1 - g) * p1[0])
    joint = -math.log(p0[0]) - math.log(p1[0])
    loss, terms = get_method("report-proposed").loss(TWO, TWO_TARGETS, TWO_COSTS)
    assert terms["soft_nll"] == pytest.approx(soft_nll, abs=1e-5)
    assert loss.item() == pytest.approx(soft_nll + joint, abs=1e-5)  # joint weight defaults to 1
    cost = get_method("report-proposed").expected_cost(TWO, TWO_COSTS)
    assert cost.item() == pytest.approx(g * 0.4 + (1 - g) * 1.0, abs=1e-6)


def test_report_maxprob_gate_is_the_top_probability():
    g = softmax([2.0, 0.0])[0]
    p1 = softmax([0.0, 1.0])
    soft_nll = -math.log(g * g + (1 - g) * p1[0])  # f0's class-0 probability is also its top one
    loss, terms = get_method("report-maxprob", joint_weight=0.0).loss(TWO, TWO_TARGETS, TWO_COSTS)
    assert terms["soft_nll"] == pytest.approx(soft_nll, abs=1e-5)
    assert loss.item() == pytest.approx(soft_nll, abs=1e-5)


@pytest.mark.parametrize("name", ["proposed", "report-proposed", "report-maxprob"])
@pytest.mark.parametrize("gap", [20.0, 40.0, 120.0])
def test_saturated_exits_give_finite_loss_and_gradients(name, gap):
    # An exit whose top softmax probability rounds to exactly 1 in float32 (logit gap above about 17), as
    # a network fitting its training set produces; log(1 - p) must not become -inf with a NaN gradient.
    logits = [t([[gap, 0.0, 0.0], [0.0, gap, 0.0]]).requires_grad_(), t([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).requires_grad_()]
    assert torch.softmax(logits[0], dim=1).amax().item() == 1.0
    gate_logit = torch.tensor([gap, -gap], requires_grad=True)
    out = OutWithLogits(logits=logits, gates=[torch.sigmoid(gate_logit)], gate_logits=[gate_logit])
    loss, _ = get_method(name).loss(out, torch.tensor([0, 2]), TWO_COSTS)
    loss.backward()
    assert torch.isfinite(loss)
    for tensor in (*logits, gate_logit):
        if tensor.grad is not None:
            assert torch.isfinite(tensor.grad).all()
    if name != "proposed":  # the confidently wrong second sample must still teach the saturated exit
        assert logits[0].grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["report-proposed", "report-maxprob"])
def test_detach_confidence_keeps_the_value_and_changes_the_gradient(name):
    grads = {}
    values = {}
    for detach in (False, True):
        logits = [t([[2.0, 0.0]]).requires_grad_(), t([[0.0, 1.0]]).requires_grad_()]
        out = Out(logits=logits, gates=[t([0.5])])
        loss, _ = get_method(name, joint_weight=0.0, detach_confidence=detach).loss(out, TWO_TARGETS, TWO_COSTS)
        loss.backward()
        grads[detach], values[detach] = logits[0].grad.clone(), loss.item()
    assert values[True] == pytest.approx(values[False], abs=1e-6)
    assert not torch.allclose(grads[True], grads[False])


def test_get_method_rejects_unknown_names_and_options():
    with pytest.raises(UnknownNameError) as info:
        get_method("nope")
    assert info.value.exit_code == 2 and "bnet" in str(info.value)
    with pytest.raises(ReproError, match="takes no option cost_weight"):
        get_method("bnet", cost_weight=1.0)
    with pytest.raises(UnknownNameError):
        get_method("proposed", mix="average")


# ---------------------------------------------------------------------------------------------- learned-gates study


def test_routing_mass_of_three_exits_by_hand():
    from repro.methods import routing_mass

    masses = routing_mass([t(g) for g in THREE_GATES])
    # sample 0: g = (0.6, 0.3): exit 0 takes 0.6, exit 1 0.4 * 0.3 = 0.12, the final exit 0.4 * 0.7 = 0.28
    # sample 1: g = (0.1, 0.8): 0.1, 0.9 * 0.8 = 0.72, 0.9 * 0.2 = 0.18
    assert masses[:, 0].tolist() == pytest.approx([0.6, 0.12, 0.28], abs=1e-6)
    assert masses[:, 1].tolist() == pytest.approx([0.1, 0.72, 0.18], abs=1e-6)


def ce(logits, y):
    return -math.log(softmax(logits)[y])


def three_ce(b):
    """Mean CE of exit b over THREE's two samples."""
    return sum(ce(THREE_LOGITS[b][n], y) for n, y in enumerate(THREE_TARGETS)) / 2


def test_final_weight_adds_the_final_exits_own_cross_entropy():
    nll, cost = three_by_hand(THREE_GATES)
    loss, _ = get_method("proposed", joint_weight=0.0, cost_weight=0.3, final_weight=0.5).loss(THREE, torch.tensor(THREE_TARGETS), torch.tensor(THREE_COSTS))
    assert loss.item() == pytest.approx(nll + 0.3 * cost + 0.5 * three_ce(2), abs=1e-5)


def test_joint_warmup_trains_the_per_exit_cross_entropy_alone_then_the_method():
    method = get_method("proposed", joint_weight=0.0, cost_weight=0.3, joint_warmup=2)
    targets, costs = torch.tensor(THREE_TARGETS), torch.tensor(THREE_COSTS)
    nll, cost = three_by_hand(THREE_GATES)
    for epoch in (0, 1):  # warm-up: sum_b CE(f_b); the soft output is still logged
        loss, terms = method.for_epoch(epoch).loss(THREE, targets, costs)
        assert loss.item() == pytest.approx(sum(three_ce(b) for b in range(3)), abs=1e-5)
        assert terms["soft_nll"] == pytest.approx(nll, abs=1e-5)
    loss, _ = method.for_epoch(2).loss(THREE, targets, costs)
    assert loss.item() == pytest.approx(nll + 0.3 * cost, abs=1e-5)
    assert [method.loss_phase(e) for e in range(4)] == [0, 0, 1, 1]


def test_warmup_gives_the_gates_no_gradient_and_every_exit_one():
    gate_logits = [torch.tensor([0.4, -1.0], requires_grad=True), torch.tensor([-0.8, 1.4], requires_grad=True)]
    logits = [t(x).requires_grad_() for x in THREE_LOGITS]
    out = OutWithLogits(logits, [torch.sigmoid(z) for z in gate_logits], gate_logits)
    loss, _ = get_method("proposed", joint_warmup=1).for_epoch(0).loss(out, torch.tensor(THREE_TARGETS), torch.tensor(THREE_COSTS))
    loss.backward()
    assert all(z.grad is None or z.grad.abs().sum() == 0 for z in gate_logits)
    assert all(f.grad.abs().sum() > 0 for f in logits)


def test_gate_options_reach_the_model():
    from repro.config import TrainConfig
    from repro.rebuild import build_model

    shapes = type("D", (), {"num_classes": 10, "channels": 3, "image_size": 32})()
    config = TrainConfig.from_recipe(method="proposed", width=0.125, exits=[0, 4], gate_bias=-3.0, gate_detach=True)
    model = build_model(config, shapes)
    assert all(branch.gate.bias.item() == -3.0 and branch.detach_gate_input for branch in model.branches)
    # Detached: a loss on the gates alone gives the branch's own layers (and the backbone) no gradient.
    out = model(torch.randn(4, 3, 32, 32))
    sum(g.sum() for g in out.gates).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.branches[0].features.parameters())
    assert model.branches[0].gate.weight.grad.abs().sum() > 0
    # The default: gates start unbiased (bias 0) and read the branch features with gradients.
    default = build_model(TrainConfig.from_recipe(method="proposed", width=0.125, exits=[0, 4]), shapes)
    assert all(branch.gate.bias.item() == 0.0 and not branch.detach_gate_input for branch in default.branches)


def test_literal_loss_is_named_by_its_options():
    literal = dict(LITERAL_LOSS, cost_weight=0.5)  # any lambda: the paper's regulariser is part of its loss
    assert is_literal_loss("proposed", literal)
    assert is_literal_loss("proposed", {"joint_weight": None, "mix": None})  # runs from before the options existed
    for key, other in (("joint_weight", 1.0), ("final_weight", 1.0), ("joint_warmup", 3), ("gate_bias", -3.0),
                       ("gate_detach", True), ("mix", "logits")):
        assert not is_literal_loss("proposed", dict(literal, **{key: other})), key
    assert not is_literal_loss("report-proposed", literal)
    # The default is the learned-gates study's fix, one option (joint_weight 0) away from the literal loss.
    defaults = method_defaults("proposed")
    assert defaults["joint_weight"] == 1.0 and not is_literal_loss("proposed", defaults)
    assert is_literal_loss("proposed", dict(defaults, joint_weight=0.0))


def test_older_proposed_configs_keep_the_literal_loss_they_were_trained_with():
    """config.json of a run from before the defaults were recorded leaves them None (or lacks the key): it was
    trained with the literal loss, and resuming or verifying it must train that loss, not today's default."""
    from repro.config import TrainConfig

    older = TrainConfig.from_recipe(method="proposed").to_dict()
    older["joint_weight"] = None
    del older["gate_bias"]
    config = TrainConfig.from_dict(older).resolved()
    assert (config.joint_weight, config.gate_bias) == (0.0, 0.0)
    assert is_literal_loss("proposed", config.to_dict())
    today = TrainConfig.from_dict(TrainConfig.from_recipe(method="proposed").to_dict())
    assert today.joint_weight == 1.0 and not is_literal_loss("proposed", today.to_dict())
