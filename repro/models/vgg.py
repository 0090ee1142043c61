"""VGG-13 as in the reproduction report of Scardapane et al. (ICASSP 2020).

Backbone: ten 3x3 convolutions in pairs of 64, 128, 256, 512, 512 channels, each followed by [batch
norm +] ReLU, with a 2x2 max-pool after every pair; then the classifier (the report's 512 -> 4096 ->
4096 -> C, or a single linear layer). At 32x32 or 28x28 input the last map is 512 x 1 x 1.

Stages: one per convolution (conv [+ BN] + ReLU [+ the pair's pool]), so stage i ends after conv i+1.
Exit positions 0..8 = after convolutions 1..9; the default places an exit at all nine, as in the
report (9 early exits + the final classifier = 10 exits). A branch after the second conv of a pair
sees the pooled map.
"""

from __future__ import annotations

import torch
from torch import nn

from repro.models.layers import classifier_head, conv_unit, scaled

# Output channels of the ten convolutions; a 2x2 max-pool follows every second one.
CHANNELS = (64, 64, 128, 128, 256, 256, 512, 512, 512, 512)
HIDDEN = 4096  # units in each hidden layer of the report's classifier (scaled by width)
DEFAULTS = {"batch_norm": False, "classifier": "report", "dropout": True}
DEFAULT_EXITS = tuple(range(len(CHANNELS) - 1))


def build_stages(in_channels: int, *, width: float, batch_norm: bool) -> list[nn.Module]:
    stages, channels = [], in_channels
    for index, out in enumerate(CHANNELS):
        out = scaled(out, width)
        stages.append(conv_unit(channels, out, batch_norm, pool=index % 2 == 1))
        channels = out
    return stages


def build_classifier(features: torch.Size, num_classes: int, *, width: float, kind: str, dropout: bool) -> nn.Module:
    """features: (C, H, W) of the last stage's output (512 x 1 x 1 at full width)."""
    return classifier_head(kind, features.numel(), scaled(HIDDEN, width), num_classes, dropout)
