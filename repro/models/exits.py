"""Exit branches, gates and the multi-exit wrapper shared by every model family.

Scardapane et al., "Differentiable branching in deep networks for fast inference" (ICASSP 2020):
a backbone f = f_E o ... o f_1 is cut into segments; after segment b an exit branch c_b gives class
logits, and a gate g_b(x) in (0, 1) computed from the branch's own features says whether to stop there.

A family (vgg.py, alexnet.py, resnet.py) supplies an ordered list of backbone stages and its final
classifier; `MultiExitNetwork` splits the stages at the chosen exit positions (exit position p = after
stage p) and attaches one `ExitBranch` per early exit. With no exits it is the plain network, so the
baseline and the multi-exit model share one backbone definition and the same state-dict keys for it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from repro.errors import ReproError, check_name
from repro.models.costs import ExitCosts, measure_costs
from repro.models.layers import MaxPool2x2

HEADS = ("conv", "pool")
BRANCH_CHANNELS = 128  # the report's branch convolution width (scaled by the model's width option)


class MultiExitOutput(NamedTuple):
    """Every exit's class logits, shallow to final, and every early exit's gate value."""

    logits: list[torch.Tensor]  # E tensors [N, C]
    gates: list[torch.Tensor]  # E-1 tensors [N], values in (0, 1), float32 even under bf16 autocast
    gate_logits: list[torch.Tensor] | None = None  # E-1 tensors [N], the gates before the sigmoid


class ExitBranch(nn.Module):
    """One early exit: features -> class logits, and a gate on the same features.

    head "conv" (the reproduction report's branch): 3x3 conv to `channels` channels, ReLU, 2x2 max-pool
    (ceil mode, so 1x1 maps work), flatten. head "pool" (a cheaper one): global average pool, flatten.
    Then `classify` (linear -> classes) and `gate` (linear -> 1, sigmoid) both read those features.
    `features` stops at the map (flattening is the readers' step: see `logits`), and the conv head pools
    before its ReLU: the same numbers (a maximum commutes with a monotone function), with the ReLU on a
    quarter of the map.
    """

    def __init__(self, feature_shape: torch.Size, num_classes: int, head: str = "conv", channels: int = BRANCH_CHANNELS):
        super().__init__()
        in_channels, height, width = feature_shape
        if head == "conv":
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, channels, 3, padding=1),
                MaxPool2x2(),
                nn.ReLU(inplace=True),
            )
            num_features = channels * math.ceil(height / 2) * math.ceil(width / 2)
        else:
            self.features = nn.Sequential(nn.AdaptiveAvgPool2d(1))
            num_features = in_channels
        self.classify = nn.Linear(num_features, num_classes)
        self.gate = nn.Linear(num_features, 1)
        # True: the gate reads a detached copy of the features, so the gate's gradient shapes the gate alone
        # and never the branch or the backbone (one of the learned-gates study's candidates, --gate-detach).
        self.detach_gate_input = False
        self._nhwc_classify = (None, None)  # (key, weight): classify's weight in (H, W, C) order, for `logits`

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, C, H, W] -> (logits [N, classes], gate [N], gate logit [N]).

        The gate logit is kept in float32 so that, under bf16 autocast, 1 - g is not rounded to 0 or 1
        and the loss can take log g and log(1 - g) as logsigmoid(+-z) without underflow.
        """
        maps = self.features(x)
        features = maps.flatten(1)
        gate_logit = self.gate_logit(features)
        return self.logits(maps, features), torch.sigmoid(gate_logit), gate_logit

    def logits(self, maps: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits [N, classes] from the head's map [N, C, H, W] (`features`: the map flattened, if at hand).

        Without gradients, a channels-last map (H, W, C order in memory, as early exit runs batches of 64 or
        more on a CPU) is read in its own order by classify's weight permuted to match (made once per weight
        version), instead of being copied into (C, H, W) order to be flattened: on this project's CPU that
        copy and the product took 0.017 ms per image at the first exit of a width-0.5 VGG-13, 4% of a batched
        early-exit call, and the product alone 0.009 (benchmarks/profile_early_exit.py). The same products
        summed in another order: logits differ by float32 rounding (relative 1e-6) from those of a
        contiguous map. Every path that runs without gradients (the reference `model(x)`, evaluation,
        early exit) takes this one, so calls in one layout agree."""
        n, c, h, w = maps.shape
        if torch.is_grad_enabled() or h * w == 1 or maps.is_contiguous() or not maps.is_contiguous(memory_format=torch.channels_last):
            return self.classify(maps.flatten(1) if features is None else features)
        weight = self.classify.weight
        # A weight made under inference mode has no version counter: it is permuted on every call instead.
        key = None if weight.is_inference() else (weight.data_ptr(), weight._version, weight.dtype, c, h, w)
        permuted = self._nhwc_classify[1]
        if key is None or self._nhwc_classify[0] != key:
            permuted = weight.detach().reshape(-1, c, h, w).permute(0, 2, 3, 1).reshape(len(weight), -1).contiguous()
            self._nhwc_classify = (key, permuted)
        return torch.addmm(self.classify.bias, maps.permute(0, 2, 3, 1).reshape(n, -1), permuted.t())

    def gate_logit(self, features: torch.Tensor) -> torch.Tensor:
        """The gate's logit [N] from the branch features, in float32 at least (the one definition that
        training and the skipping inference paths share, so their gates agree bit for bit)."""
        gate_logit = self.gate(features.detach() if self.detach_gate_input else features).squeeze(-1)
        return gate_logit.to(torch.promote_types(gate_logit.dtype, torch.float32))


def check_exit_positions(model_name: str, exits, num_positions: int, default: tuple[int, ...]) -> tuple[int, ...]:
    """None -> the family's default; else each position an int in [0, num_positions), no repeats -> sorted."""
    if exits is None:
        return tuple(default)
    if isinstance(exits, (str, bytes)) or not hasattr(exits, "__iter__"):
        raise ReproError(f"exits must be a list of exit positions, e.g. [0, 2]; got {exits!r}")
    positions = list(exits)
    for position in positions:
        if isinstance(position, bool) or not isinstance(position, int):
            raise ReproError(f"exit positions must be integers; got {position!r}")
        if not 0 <= position < num_positions:
            raise ReproError(
                f"exit position {position} is out of range for {model_name}: valid positions are 0..{num_positions - 1}"
            )
    repeated = sorted({p for p in positions if positions.count(p) > 1})
    if repeated:
        raise ReproError(f"exit position {repeated[0]} is given more than once; each position holds at most one exit")
    return tuple(sorted(positions))


def stage_output_shapes(stages: list[nn.Module], input_shape: tuple[int, int, int]) -> list[torch.Size]:
    """(C, H, W) after each stage, from one forward pass of a zero image in eval mode (so batch norm's
    running statistics are neither needed nor changed)."""
    shapes, x = [], torch.zeros(1, *input_shape)
    with torch.no_grad():
        for stage in stages:
            was_training = stage.training
            x = stage.eval()(x)
            stage.train(was_training)
            shapes.append(x.shape[1:])
    return shapes


class MultiExitNetwork(nn.Module):
    """A backbone of stages with early exits after the chosen stages and the family's classifier at the end.

    forward(x) -> MultiExitOutput(logits: E x [N, C], gates: (E-1) x [N]).
    Segment b (b = 0..E-1) runs stages (exit_positions[b-1], exit_positions[b]]; the last segment runs
    to the end of the backbone and is followed by `classifier`.
    """

    def __init__(
        self,
        name: str,
        stages: list[nn.Module],
        classifier: nn.Module,
        exit_positions: tuple[int, ...],
        num_classes: int,
        input_shape: tuple[int, int, int],
        stage_shapes: list[torch.Size],
        head: str = "conv",
        branch_channels: int = BRANCH_CHANNELS,
        options: dict | None = None,
    ):
        super().__init__()
        check_name("exit head", head, HEADS)
        self.name = name
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.exit_positions = tuple(exit_positions)
        self.num_exits = len(self.exit_positions) + 1
        self.options = dict(options or {})  # the resolved create_model options, enough to rebuild the model
        self.stages = nn.ModuleList(stages)
        self.branches = nn.ModuleList(
            ExitBranch(stage_shapes[p], num_classes, head, branch_channels) for p in self.exit_positions
        )
        self.classifier = classifier
        ends = [p + 1 for p in self.exit_positions] + [len(stages)]
        starts = [0] + ends[:-1]
        self.segment_bounds = tuple(zip(starts, ends))  # stage index ranges [start, stop) per segment
        # The same stages as plain tuples, for run_segment: indexing an nn.ModuleList goes through
        # nn.Module.__getattr__ and ModuleList.__getitem__, 2-5 us a stage, 23-48 us (about 1%) of a width-0.5
        # VGG-13's batch-1 call on this project's CPU. Not registered twice: a tuple is no Module.
        self._segment_stages = tuple(tuple(self.stages[start:stop]) for start, stop in self.segment_bounds)
        self._costs = None  # ExitCosts, measured on first use of .costs

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ReproError unless x is a batch [N, C, H, W] of the shape this model was built for."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            got = "x".join(str(s) for s in x.shape[1:]) if x.dim() == 4 else f"a {x.dim()}-d tensor"
            raise ReproError(
                f"{self.name} was built for {c}x{h}x{w} inputs (channels x height x width); got {got}"
            )

    def run_segment(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """The backbone stages between exit b-1 and exit b (for b = E-1: to the end, without the classifier)."""
        for stage in self._segment_stages[b]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> MultiExitOutput:
        self.check_input(x)
        logits, gates, gate_logits = [], [], []
        for b, branch in enumerate(self.branches):
            x = self.run_segment(b, x)
            exit_logits, gate, gate_logit = branch(x)
            logits.append(exit_logits)
            gates.append(gate)
            gate_logits.append(gate_logit)
        x = self.run_segment(self.num_exits - 1, x)
        logits.append(self.classifier(x))
        return MultiExitOutput(logits, gates, gate_logits)

    def set_gates(self, bias: float | None = None, detach_input: bool = False) -> None:
        """Gate options of the paper's method: every gate's bias set to `bias` (None: keep the default
        initialisation; -3 starts gates at sigmoid(-3) = 0.05, nearly closed, so the soft output's weight
        reaches the deep exits), and whether gates read detached features."""
        for branch in self.branches:
            if bias is not None:
                with torch.no_grad():
                    branch.gate.bias.fill_(bias)
            branch.detach_gate_input = detach_input

    def exit_output_layers(self) -> list[nn.Module]:
        """The layer that produces each exit's logits, shallow to final: where the gradient each exit's
        classifier receives is measured (repro.trainer)."""
        final = [module for module in self.classifier.modules() if isinstance(module, nn.Linear)][-1]
        return [branch.classify for branch in self.branches] + [final]

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The network without exits: every stage, then the classifier -> final logits [N, C]."""
        for stage in self.stages:
            x = stage(x)
        return self.classifier(x)

    @property
    def costs(self) -> ExitCosts:
        """ExitCosts: MACs, FLOPs and parameters of leaving at each exit; measured once."""
        if self._costs is None:
            self._costs = measure_costs(self)
        return self._costs

    def extra_repr(self) -> str:
        return f"name={self.name!r}, exit_positions={self.exit_positions}, input_shape={self.input_shape}"
