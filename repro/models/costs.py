"""What it costs to leave a multi-exit network at each exit: MACs, FLOPs and parameters per sample.

Counted with torch.utils.flop_counter.FlopCounterMode on the real modules (each backbone segment, each
branch head, each gate and the final classifier separately, on one sample of the shape that reaches it),
so there are no hand-written per-layer formulas. The counter counts matrix multiplies and convolutions
(2 FLOPs per multiply-accumulate; biases, activations, pooling and batch norm are not counted), so
MACs = FLOPs / 2.

The cost of leaving at exit b (Scardapane et al. 2020, the expected-cost term of the training loss; the
reproduction report's speed-up tables) = backbone up to exit b + every branch head and gate evaluated on
the way (a sample that leaves at exit 3 has paid for heads 0-3). The final exit costs the full backbone
plus all early heads. plain_macs is the network without exits (the backbone and its classifier).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from repro.models.layers import eval_mode


@dataclass(frozen=True)
class ExitCosts:
    cumulative_macs: list[float]  # [E] MACs per sample to leave at exit b
    plain_macs: float  # MACs per sample of the network without exits
    backbone_macs: list[float]  # [E] backbone MACs up to exit b (for the final exit: + the classifier)
    head_macs: list[float]  # [E-1] branch b: features + linear classifier, without the gate
    gate_macs: list[float]  # [E-1] gate b (linear on the branch features)
    cumulative_flops: list[float]  # [E] FLOPs as counted (= 2 x cumulative_macs)
    params: list[int]  # [E] parameters used by a sample that leaves at exit b (final: the whole model)
    plain_params: int  # parameters of the network without exits
    # [E] (segment b, head b) largest activation per sample in bytes, the segment's input included; the last
    # entry's head is the final classifier. repro.models.inference sizes a batch's pieces by it.
    activation_bytes: list[tuple[int, int]]

    @property
    def num_exits(self) -> int:
        return len(self.cumulative_macs)

    def relative(self) -> torch.Tensor:
        """Cumulative cost of each exit divided by the final exit's: float32 [E], last entry 1.0."""
        cumulative = torch.tensor(self.cumulative_macs, dtype=torch.float64)
        return (cumulative / cumulative[-1]).float()


def _counted_flops(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter:
        out = module(x)
    return counter.get_total_flops(), out


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure_costs(model) -> ExitCosts:
    """Measure a MultiExitNetwork (repro.models.exits) segment by segment; eval mode, no gradients,
    and every module's train/eval flag restored afterwards."""
    parameter = next(model.parameters())
    x = torch.zeros(1, *model.input_shape, dtype=parameter.dtype, device=parameter.device)
    largest = _LargestActivation(model)
    with eval_mode(model), torch.no_grad(), largest:
        segment_flops, head_flops, gate_flops, activation_bytes = [], [], [], []
        for b in range(model.num_exits):
            start, stop = model.segment_bounds[b]
            flops = 0
            largest.reset(x)
            for index in range(start, stop):
                stage_flops, x = _counted_flops(model.stages[index], x)
                flops += stage_flops
            segment_flops.append(flops)
            segment_bytes = largest.reset()
            if b < model.num_exits - 1:
                branch = model.branches[b]
                features_flops, features = _counted_flops(branch.features, x)
                features = features.flatten(1)
                classify_flops, _ = _counted_flops(branch.classify, features)
                head_flops.append(features_flops + classify_flops)
                gate_flops.append(_counted_flops(branch.gate, features)[0])
            activation_bytes.append((segment_bytes, largest.reset()))
        classifier_flops, _ = _counted_flops(model.classifier, x)
        activation_bytes[-1] = (activation_bytes[-1][0], largest.reset())

    num_early = model.num_exits - 1
    backbone_flops = [sum(segment_flops[: b + 1]) for b in range(model.num_exits)]
    backbone_flops[-1] += classifier_flops
    heads_so_far = [sum(head_flops[: b + 1]) + sum(gate_flops[: b + 1]) for b in range(num_early)]
    heads_so_far.append(sum(head_flops) + sum(gate_flops))
    cumulative_flops = [float(backbone + heads) for backbone, heads in zip(backbone_flops, heads_so_far)]

    stage_params = [_param_count(stage) for stage in model.stages]
    branch_params = [_param_count(branch) for branch in model.branches]
    plain_params = sum(stage_params) + _param_count(model.classifier)
    params = [
        sum(stage_params[: model.segment_bounds[b][1]]) + sum(branch_params[: b + 1]) for b in range(num_early)
    ]
    params.append(plain_params + sum(branch_params))
    return ExitCosts(
        cumulative_macs=[flops / 2 for flops in cumulative_flops],
        plain_macs=backbone_flops[-1] / 2,
        backbone_macs=[flops / 2 for flops in backbone_flops],
        head_macs=[flops / 2 for flops in head_flops],
        gate_macs=[flops / 2 for flops in gate_flops],
        cumulative_flops=cumulative_flops,
        params=params,
        plain_params=plain_params,
        activation_bytes=activation_bytes,
    )


class _LargestActivation:
    """Within `with`: records the largest output (bytes per sample) of any leaf module of `model` since the
    last `reset(x)`, which returns it and starts again from x's own size (0 without x)."""

    def __init__(self, model):
        self.leaves = [m for m in model.modules() if not list(m.children())]
        self.largest, self.handles = 0, []

    def _record(self, module, inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.dim() > 0:
            self.largest = max(self.largest, output[0].numel() * output.element_size())

    def reset(self, x: torch.Tensor | None = None) -> int:
        largest, self.largest = self.largest, (0 if x is None else x[0].numel() * x.element_size())
        return largest

    def __enter__(self):
        self.handles = [leaf.register_forward_hook(self._record) for leaf in self.leaves]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
