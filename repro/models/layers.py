"""The building blocks the model families share: scaled channel counts, a conv unit, classifier heads.

Each family (vgg.py, alexnet.py, resnet.py) describes its backbone as an ordered list of stages built
from these pieces; nothing here knows about exits (see exits.py for those).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

CLASSIFIERS = ("report", "linear")


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier (width=0.25 turns 64..512 into 16..128), at least 1."""
    return max(1, int(round(channels * width)))


class MaxPool2x2(nn.MaxPool2d):
    """2x2 max-pool with stride 2 and ceil mode (odd maps keep their last row/column).

    Without gradients (evaluation, inference, validation) it is the elementwise maximum of the four
    strided quarters of the map: the same numbers as max_pool2d (a maximum is exact), 3-10x faster on this
    project's CPU (measured: [256, 64, 16, 16] 1.2 ms vs 12.6 ms; batch 1 [1, 64, 32, 32] 0.03 vs 0.07 ms),
    where max_pool2d is among the largest costs that MACs do not count. Training keeps max_pool2d, whose
    gradient goes to one element of each window."""

    def __init__(self):
        super().__init__(2, ceil_mode=True)

    def forward(self, x):
        if torch.is_grad_enabled():
            return super().forward(x)
        height, width = x.shape[-2:]
        if height % 2 or width % 2:  # ceil mode: the odd row/column is a window of its own
            x = torch.nn.functional.pad(x, (0, width % 2, 0, height % 2), value=float("-inf"))
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def conv_unit(in_channels: int, out_channels: int, batch_norm: bool, pool: bool) -> nn.Sequential:
    """3x3 convolution (padding 1, so the size is kept) [+ batch norm] + ReLU [+ 2x2 max-pool].

    The pool uses ceil_mode so odd maps keep their last row/column: 28x28 inputs go 28-14-7-4-2-1,
    the same number of poolings as 32x32 inputs (32-16-8-4-2-1).
    """
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    if pool:
        layers.append(MaxPool2x2())
    return nn.Sequential(*layers)


def classifier_head(kind: str, in_features: int, hidden: int, num_classes: int, dropout: bool) -> nn.Sequential:
    """The final classifier on flattened features.

    kind "report": in -> hidden -> hidden -> classes with ReLU (and dropout p=0.5 before each hidden
    layer when `dropout`), the reproduction report's 512 -> 4096 -> 4096 -> C for VGG-13.
    kind "linear": in -> classes.
    """
    if kind == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
    layers: list[nn.Module] = [nn.Flatten()]
    for size_in in (in_features, hidden):
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.Linear(size_in, hidden), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for the duration (dropout off, batch norm on its running statistics); every module's own
    train/eval flag is restored afterwards, so measuring or running a model never changes how it trains."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
