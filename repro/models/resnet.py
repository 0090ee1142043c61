"""ResNet-18 in its CIFAR form (He et al., CVPR 2016; the 3x3-stem variant used for 32x32 inputs).

Backbone: a 3x3 convolution stem (64 channels, batch norm, ReLU; no stem max-pool), four stages of two
BasicBlocks with 64, 128, 256, 512 channels (the first block of stages 2-4 halves the size with stride
2 and a 1x1 projection shortcut); then global average pooling and a linear layer (classifier "linear",
the default), or the reproduction report's 512 -> 4096 -> 4096 -> C (classifier "report").

Stages: the stem merged with the first block, then one stage per BasicBlock (8 stages). Exit positions
0..6 = after BasicBlocks 1..7 (after each block but the last); the default uses all seven.
Batch norm is part of the architecture, so batch_norm=False is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from repro.errors import ReproError
from repro.models.layers import classifier_head, scaled

# (output channels, stride of the first block) for the four stages of two BasicBlocks.
LAYERS = ((64, 1), (128, 2), (256, 2), (512, 2))
BLOCKS_PER_STAGE = 2
HIDDEN = 4096  # hidden units of the optional "report" classifier (scaled by width)
DEFAULTS = {"batch_norm": True, "classifier": "linear", "dropout": True}
DEFAULT_EXITS = tuple(range(len(LAYERS) * BLOCKS_PER_STAGE - 1))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1 conv + BN projection) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def build_stages(in_channels: int, *, width: float, batch_norm: bool) -> list[nn.Module]:
    if not batch_norm:
        raise ReproError("resnet18 always uses batch norm (batch_norm=False applies to vgg13 and alexnet only)")
    stem_channels = scaled(LAYERS[0][0], width)
    stem = nn.Sequential(
        nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True)
    )
    blocks, channels = [], stem_channels
    for out, stride in LAYERS:
        out = scaled(out, width)
        for index in range(BLOCKS_PER_STAGE):
            blocks.append(BasicBlock(channels, out, stride if index == 0 else 1))
            channels = out
    return [nn.Sequential(stem, blocks[0]), *blocks[1:]]


def build_classifier(features: torch.Size, num_classes: int, *, width: float, kind: str, dropout: bool) -> nn.Module:
    """features: (C, H, W) of the last block's output (512 x 4 x 4 at full width and 32x32 input)."""
    pool = nn.AdaptiveAvgPool2d(1)
    return nn.Sequential(pool, classifier_head(kind, features[0], scaled(HIDDEN, width), num_classes, dropout))
