"""Multi-exit models: the registry, the forward contract, options, and compute accounting.

Parametrized over every registered model x both input shapes (3x32x32, 1x28x28) x default and a custom
exit subset. Contract tests use tiny widths; the cost tests also check full-width MACs against
hand-computed layer sums.
"""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from repro.errors import ReproError, UnknownNameError
from repro.models import create_model, list_models
from repro.models.inference import run_plain

SHAPES = [(3, 32), (1, 28)]  # (channels, image size): CIFAR, Fashion-MNIST
CUSTOM_EXITS = {"vgg13": [1, 4, 8], "alexnet": [1, 3], "resnet18": [0, 3, 6]}
DEFAULT_EARLY_EXITS = {"vgg13": 9, "alexnet": 4, "resnet18": 7}
WIDTH = 0.125  # 8..64 channels: fast on two CPU cores


def tiny(name, shape, exits, num_classes=7, **options):
    channels, size = shape
    torch.manual_seed(0)
    chosen = None if exits == "default" else CUSTOM_EXITS[name]
    return create_model(name, num_classes, channels, size, exits=chosen, width=WIDTH, **options).double()


def counted_flops(fn, *args):
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def test_registry_lists_the_three_families():
    assert list_models() == ["alexnet", "resnet18", "vgg13"]


@pytest.mark.parametrize("exits", ["default", "custom"])
@pytest.mark.parametrize("shape", SHAPES, ids=["3x32", "1x28"])
@pytest.mark.parametrize("name", list_models())
def test_forward_contract(name, shape, exits):
    model = tiny(name, shape, exits)
    expected_early = DEFAULT_EARLY_EXITS[name] if exits == "default" else len(CUSTOM_EXITS[name])
    assert model.num_exits == expected_early + 1
    assert model.input_shape == (shape[0], shape[1], shape[1])
    assert model.num_classes == 7
    if exits == "custom":
        assert model.exit_positions == tuple(CUSTOM_EXITS[name])
    x = torch.randn(3, shape[0], shape[1], shape[1], dtype=torch.float64)
    out = model(x)
    assert len(out.logits) == model.num_exits and len(out.gates) == model.num_exits - 1
    for logits in out.logits:
        assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    for gate, gate_logit in zip(out.gates, out.gate_logits, strict=True):
        assert gate.shape == (3,) and torch.all((gate > 0) & (gate < 1))
        assert torch.equal(gate, torch.sigmoid(gate_logit))
    # The final exit is the backbone's own classifier: the same logits as the network without exits.
    model.eval()
    assert torch.allclose(model(x).logits[-1], run_plain(model, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("exits", ["default", "custom"])
@pytest.mark.parametrize("shape", SHAPES, ids=["3x32", "1x28"])
@pytest.mark.parametrize("name", list_models())
def test_costs_are_consistent_and_match_the_flop_counter(name, shape, exits):
    model = tiny(name, shape, exits)
    costs = model.costs
    assert model.costs is costs  # measured once, cached
    E = model.num_exits
    assert len(costs.cumulative_macs) == len(costs.backbone_macs) == len(costs.params) == E
    assert len(costs.head_macs) == len(costs.gate_macs) == E - 1
    assert all(later > earlier for earlier, later in zip(costs.cumulative_macs, costs.cumulative_macs[1:]))
    assert costs.cumulative_macs[-1] >= costs.plain_macs
    assert costs.backbone_macs[-1] == costs.plain_macs
    for b in range(E - 1):
        heads = sum(costs.head_macs[: b + 1]) + sum(costs.gate_macs[: b + 1])
        assert costs.cumulative_macs[b] == costs.backbone_macs[b] + heads
        # a gate is one linear layer on the branch features: features x 1 MACs
        assert costs.gate_macs[b] == model.branches[b].gate.in_features
    assert costs.cumulative_macs[-1] == costs.plain_macs + sum(costs.head_macs) + sum(costs.gate_macs)
    assert costs.cumulative_flops == [2 * m for m in costs.cumulative_macs]
    relative = costs.relative()
    assert relative.shape == (E,) and relative[-1].item() == 1.0
    # Independent counts: one full forward of one sample = the final exit's cost; the plain network = plain_macs.
    x = torch.zeros(1, shape[0], shape[1], shape[1], dtype=torch.float64)
    assert counted_flops(model, x) == 2 * costs.cumulative_macs[-1]
    assert counted_flops(run_plain, model, x) == 2 * costs.plain_macs
    # Parameters: leaving at the final exit uses every parameter; exit b uses no more than exit b+1.
    assert costs.params[-1] == sum(p.numel() for p in model.parameters())
    assert costs.plain_params == costs.params[-1] - sum(p.numel() for p in model.branches.parameters())
    assert all(later > earlier for earlier, later in zip(costs.params, costs.params[1:]))


def conv(c_in, c_out, size, k=3):
    """MACs of a k x k convolution producing a size x size map (stride handled by the caller's size)."""
    return c_in * c_out * k * k * size * size


def test_vgg13_full_width_macs_by_hand():
    model = create_model("vgg13", 10)
    # Ten 3x3 convs: (in, out, output size) with pools after every pair: 32, 32, 16, 16, 8, 8, 4, 4, 2, 2.
    layers = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8), (256, 256, 8),
              (256, 512, 4), (512, 512, 4), (512, 512, 2), (512, 512, 2)]
    backbone = sum(conv(*layer) for layer in layers)
    classifier = 512 * 4096 + 4096 * 4096 + 4096 * 10
    assert model.costs.plain_macs == backbone + classifier
    # Exit 0 sits after conv 1 (64 x 32 x 32, before the pool): branch conv 64->128 at 32x32, pool to
    # 16x16, linear 128*16*16 -> 10, gate 128*16*16 -> 1.
    assert model.costs.head_macs[0] == conv(64, 128, 32) + 128 * 16 * 16 * 10
    assert model.costs.gate_macs[0] == 128 * 16 * 16
    assert model.costs.cumulative_macs[0] == conv(3, 64, 32) + conv(64, 128, 32) + 128 * 16 * 16 * 11
    # Exit 1 sits after conv 2 and its pool (64 x 16 x 16): branch conv at 16x16, pool to 8x8.
    assert model.costs.head_macs[1] == conv(64, 128, 16) + 128 * 8 * 8 * 10


def test_resnet18_full_width_macs_by_hand():
    model = create_model("resnet18", 10)
    stem = conv(3, 64, 32)
    stage1 = 4 * conv(64, 64, 32)
    stage2 = conv(64, 128, 16) + 3 * conv(128, 128, 16) + conv(64, 128, 16, k=1)  # + 1x1 projection
    stage3 = conv(128, 256, 8) + 3 * conv(256, 256, 8) + conv(128, 256, 8, k=1)
    stage4 = conv(256, 512, 4) + 3 * conv(512, 512, 4) + conv(256, 512, 4, k=1)
    assert model.costs.plain_macs == stem + stage1 + stage2 + stage3 + stage4 + 512 * 10
    assert model.costs.plain_macs == 555_422_720  # the usual "0.56 GMACs" of CIFAR ResNet-18
    assert model.costs.backbone_macs[0] == stem + 2 * conv(64, 64, 32)  # stem + first BasicBlock


def test_alexnet_full_width_layer_list_by_hand():
    model = create_model("alexnet", 10, 1, 28)
    # 28 -> pool 14 -> pool 7 -> (conv 3, 4, 5 at 7x7) -> pool 4 (ceil mode); classifier 256*4*4 -> 1024 -> 1024 -> 10.
    backbone = conv(1, 64, 28) + conv(64, 192, 14) + conv(192, 384, 7) + conv(384, 256, 7) + conv(256, 256, 7)
    assert model.costs.plain_macs == backbone + 256 * 16 * 1024 + 1024 * 1024 + 1024 * 10
    assert model.num_exits == 5


def test_baseline_is_the_same_backbone_without_exits():
    torch.manual_seed(1)
    multi = create_model("vgg13", 10, width=WIDTH).eval()
    baseline = create_model("vgg13", 10, exits=[], width=WIDTH).eval()
    assert baseline.num_exits == 1 and baseline.exit_positions == ()
    # Same state-dict keys for the backbone: the baseline loads the multi-exit model's backbone weights.
    missing, unexpected = baseline.load_state_dict(multi.state_dict(), strict=False)
    assert missing == [] and all(key.startswith("branches.") for key in unexpected)
    x = torch.randn(2, 3, 32, 32)
    out = baseline(x)
    assert out.gates == [] and torch.equal(out.logits[0], run_plain(multi, x))
    assert baseline.costs.cumulative_macs == [baseline.costs.plain_macs] == [multi.costs.plain_macs]


def test_segments_run_the_models_own_stages_also_in_a_copy():
    # run_segment reads tuples of the stages (faster than indexing the ModuleList): they must be the stages
    # themselves, also after copy.deepcopy, or a copied model would run the original's weights.
    import copy

    model = create_model("vgg13", 10, exits=[1, 4], width=0.125).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in twin.stages.parameters():
            parameter.mul_(0.5)
    x = torch.randn(2, 3, 32, 32)
    for net in (model, twin):
        h = x
        for stage in net.stages[:2]:
            h = stage(h)
        assert torch.equal(net.run_segment(0, x), h)
        flat = [stage for segment in net._segment_stages for stage in segment]
        assert len(flat) == len(net.stages) and all(a is b for a, b in zip(flat, net.stages))
    assert not torch.equal(model.run_segment(0, x), twin.run_segment(0, x))


def test_options_change_the_layers():
    plain = create_model("vgg13", 10, width=0.25)
    assert plain.stages[0][0].out_channels == 16 and plain.stages[-1][0].out_channels == 128
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.Dropout) for m in plain.classifier.modules()) == 2
    assert [m.out_features for m in plain.classifier if isinstance(m, nn.Linear)] == [1024, 1024, 10]
    assert plain.branches[0].features[0].out_channels == 32  # 128 x 0.25
    varied = create_model("vgg13", 10, width=0.25, batch_norm=True, classifier="linear", dropout=False,
                          head="pool", branch_channels=24)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in varied.stages.modules()) == 10
    assert [m.out_features for m in varied.classifier if isinstance(m, nn.Linear)] == [10]
    assert not any(isinstance(m, nn.Dropout) for m in varied.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in varied.branches.modules())
    assert varied.costs.head_macs[0] == 16 * 10  # pooled head: 16 channels -> 10 classes
    assert varied.options["head"] == "pool" and varied.options["batch_norm"] is True
    assert create_model("resnet18", 10, width=0.125).options["classifier"] == "linear"


def test_costs_leave_training_state_and_batch_norm_statistics_alone():
    model = create_model("resnet18", 10, width=WIDTH)
    model.branches[0].eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.costs
    assert model.training and not model.branches[0].training and model.branches[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_any_class_count_and_image_size_works():
    model = create_model("alexnet", 3, 3, 20, width=WIDTH)
    out = model(torch.randn(2, 3, 20, 20))
    assert [tuple(o.shape) for o in out.logits] == [(2, 3)] * 5
    model = create_model("resnet18", 100, 1, 28, exits=[6], width=WIDTH)
    assert tuple(model(torch.randn(2, 1, 28, 28)).logits[0].shape) == (2, 100)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "vgg16"}, "unknown model 'vgg16'; valid: alexnet, resnet18, vgg13"),
        ({"exits": [9]}, "exit position 9 is out of range for vgg13: valid positions are 0..8"),
        ({"exits": [-1]}, "exit position -1 is out of range for vgg13: valid positions are 0..8"),
        ({"exits": [3, 1, 3]}, "exit position 3 is given more than once; each position holds at most one exit"),
        ({"exits": [1.5]}, "exit positions must be integers; got 1.5"),
        ({"exits": "0,1"}, "exits must be a list of exit positions, e.g. [0, 2]; got '0,1'"),
        ({"head": "mlp"}, "unknown exit head 'mlp'; valid: conv, pool"),
        ({"classifier": "big"}, "unknown classifier 'big'; valid: linear, report"),
        ({"width": 0}, "width must be a positive number (1.0 = the published channel counts); got 0"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2; got 1"),
        ({"depth": 3}, "unknown model option 'depth'; valid: batch_norm, branch_channels, classifier, dropout, head, width"),
        ({"batch_norm": "yes"}, "batch_norm must be true or false; got 'yes'"),
        ({"name": "resnet18", "batch_norm": False},
         "resnet18 always uses batch norm (batch_norm=False applies to vgg13 and alexnet only)"),
    ],
)
def test_bad_model_arguments_raise_one_clear_line(kwargs, message):
    arguments = {"name": "vgg13", "num_classes": 10, "width": WIDTH, **kwargs}
    with pytest.raises(ValueError) as raised:
        create_model(**arguments)
    assert str(raised.value) == message
    assert isinstance(raised.value, ReproError)
    if kwargs.get("name") == "vgg16":
        assert isinstance(raised.value, UnknownNameError) and raised.value.exit_code == 2


def test_unsorted_exits_are_sorted_shallow_to_final():
    assert create_model("vgg13", 10, exits=[8, 0, 4], width=WIDTH).exit_positions == (0, 4, 8)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 1, 32, 32), "vgg13 was built for 3x32x32 inputs (channels x height x width); got 1x32x32"),
        ((2, 3, 28, 28), "vgg13 was built for 3x32x32 inputs (channels x height x width); got 3x28x28"),
        ((3, 32, 32), "vgg13 was built for 3x32x32 inputs (channels x height x width); got a 3-d tensor"),
    ],
)
def test_input_of_the_wrong_shape_is_refused(shape, message):
    model = create_model("vgg13", 10, width=WIDTH)
    with pytest.raises(ReproError, match=None) as raised:
        model(torch.zeros(shape))
    assert str(raised.value) == message


def test_ceil_mode_pooling_keeps_28x28_maps():
    model = create_model("vgg13", 10, 1, 28, width=WIDTH)
    x, sizes = torch.zeros(1, 1, 28, 28), []
    for b in range(model.num_exits):
        x = model.run_segment(b, x)
        sizes.append(x.shape[-1])
    # a pool after every second conv, odd sizes rounded up: 28 -> 14 -> 7 -> 4 -> 2 -> 1
    assert sizes == [28, 14, 14, 7, 7, 4, 4, 2, 2, 1]
    assert model.classifier[2].in_features == 64  # 512 x 1/8 channels x 1 x 1


@pytest.mark.parametrize("size", [32, 16, 7, 5, 1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_fast_inference_pool_gives_max_pool2d_exactly(size, channels_last):
    import torch.nn.functional as F

    from repro.models.layers import MaxPool2x2

    x = torch.relu(torch.randn(3, 8, size, size + 1))  # odd widths too; ReLU makes ties (zeros) common
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    expected = F.max_pool2d(x, 2, ceil_mode=True)
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(x), expected)
    assert torch.equal(MaxPool2x2()(x), expected)  # with gradients: max_pool2d itself


def test_the_conv_head_pools_before_its_relu_and_gives_the_report_branchs_numbers():
    """conv -> pool -> ReLU is conv -> ReLU -> pool (a maximum commutes with the ReLU), with and without
    gradients, and its gradient reaches the same weights."""
    from repro.models.exits import ExitBranch

    torch.manual_seed(0)
    branch = ExitBranch(torch.Size([8, 7, 7]), 5).double()
    conv = branch.features[0]
    x = torch.randn(4, 8, 7, 7, dtype=torch.float64)
    report = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten())
    expected = branch.classify(report(x))
    with torch.no_grad():
        assert torch.equal(branch.features(x).flatten(1), report(x))
    logits, _, _ = branch(x)
    assert torch.equal(logits, expected)
    logits.sum().backward()
    ours = conv.weight.grad.clone()
    conv.weight.grad = None
    expected.sum().backward()
    assert torch.allclose(conv.weight.grad, ours, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_channels_last_map_is_classified_in_its_own_order_with_the_same_numbers(dtype):
    """Without gradients, ExitBranch.logits reads a channels-last map with a permuted copy of classify's
    weight (no copy of the map): the flattened product's numbers (float64: to 1e-12; float32: to its
    rounding), refreshed when the weight changes; with gradients, or for a contiguous map, the plain flatten."""
    from repro.models.exits import ExitBranch

    torch.manual_seed(0)
    branch = ExitBranch(torch.Size([16, 8, 8]), 10, channels=16).to(dtype)  # maps of 16 x 4 x 4
    maps = torch.relu(torch.randn(70, 16, 4, 4, dtype=dtype))
    last = maps.contiguous(memory_format=torch.channels_last)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for step in range(2):
        with torch.no_grad():
            expected = branch.classify(maps.flatten(1))
            assert torch.equal(branch.logits(maps), expected)  # contiguous: the flatten itself
            assert torch.allclose(branch.logits(last), expected, rtol=tolerance, atol=tolerance)
        with torch.inference_mode():
            assert torch.allclose(branch.logits(last), expected, rtol=tolerance, atol=tolerance)
        assert torch.equal(branch.logits(last), branch.classify(last.flatten(1)))  # with gradients
        with torch.no_grad():  # an optimiser step in place: the permuted weight is made again
            branch.classify.weight.mul_(-0.5).add_(0.01)


def test_a_head_made_under_inference_mode_classifies_channels_last_maps_too():
    """Inference-mode weights have no version counter to key the permuted weight on: it is made each call."""
    from repro.models.exits import ExitBranch

    torch.manual_seed(0)
    with torch.inference_mode():
        branch = ExitBranch(torch.Size([16, 8, 8]), 10, channels=16).double()
        maps = torch.relu(torch.randn(70, 16, 4, 4, dtype=torch.float64))
        expected = branch.classify(maps.flatten(1))
        last = maps.contiguous(memory_format=torch.channels_last)
        for _ in range(2):
            assert torch.allclose(branch.logits(last), expected, rtol=1e-12, atol=1e-12)
            branch.classify.weight.mul_(-0.5)  # in place, untracked: the next call must see it
            expected = branch.classify(maps.flatten(1))
