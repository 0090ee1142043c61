"""AlexNet adapted to 32x32 inputs (CIFAR-10/100, and 28x28 Fashion-MNIST).

Layer list (conv = 3x3, padding 1, [+ batch norm] + ReLU; pool = 2x2 max-pool, ceil mode):
    stage 0: conv 64   + pool      32 -> 16   (28 -> 14)
    stage 1: conv 192  + pool      16 -> 8    (14 -> 7)
    stage 2: conv 384               8         (7)
    stage 3: conv 256               8         (7)
    stage 4: conv 256  + pool       8 -> 4    (7 -> 4)
    classifier: flatten 256*4*4 -> [dropout] 1024 -> ReLU -> [dropout] 1024 -> ReLU -> C  ("report")
                or flatten -> C ("linear").
Why: this keeps AlexNet's five convolutions, its channel progression (64-192-384-256-256) and its
three poolings (after conv 1, 2 and 5), as the usual CIFAR adaptations do, but replaces the 11x11
stride-4 and 5x5 kernels, which would shrink a 32x32 image to almost nothing, by 3x3 kernels, and
drops local response normalisation (batch norm is the option instead). The fully connected head is
AlexNet's three layers shrunk from 4096 to 1024 hidden units, since the input is 4096 features
rather than 9216 and CIFAR has 10-100 classes rather than 1000.

Exit positions 0..3 = after convolutions 1..4 (after each convolution but the last); the default uses
all four (4 early exits + the final classifier).
"""

from __future__ import annotations

import torch
from torch import nn

from repro.models.layers import classifier_head, conv_unit, scaled

# (output channels, followed by a 2x2 max-pool?) for the five convolutions.
LAYERS = ((64, True), (192, True), (384, False), (256, False), (256, True))
HIDDEN = 1024  # units in each hidden fully connected layer (scaled by width)
DEFAULTS = {"batch_norm": False, "classifier": "report", "dropout": True}
DEFAULT_EXITS = tuple(range(len(LAYERS) - 1))


def build_stages(in_channels: int, *, width: float, batch_norm: bool) -> list[nn.Module]:
    stages, channels = [], in_channels
    for out, pool in LAYERS:
        out = scaled(out, width)
        stages.append(conv_unit(channels, out, batch_norm, pool))
        channels = out
    return stages


def build_classifier(features: torch.Size, num_classes: int, *, width: float, kind: str, dropout: bool) -> nn.Module:
    """features: (C, H, W) of the last stage's output (256 x 4 x 4 at full width and 32x32 input)."""
    return classifier_head(kind, features.numel(), scaled(HIDDEN, width), num_classes, dropout)
