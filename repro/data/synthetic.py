"""The embedded synthetic dataset: 10 classes of 32x32 RGB images with graded difficulty, made from a seed.

Built so that early exits matter (the premise of Scardapane et al., ICASSP 2020, Sec. 1): each image holds
an ordered pair of 7x7 motifs side by side, A left of B, at a random place. The 10 classes are 5 motif
pairs, each in both orders, so telling a class from its mirror needs the *arrangement* of two parts -- a
feature of deeper layers with a larger receptive field; a bag of local features sees only the pair. Each
class also has a hue; how much of it the motifs carry falls with the sample's difficulty d ~ U(0, 1):

    colour  = (1 - d) * class hue + d * random hue      (easy samples: colour alone names the class)
    noise   = N(0, sigma), sigma = 0.04 + 0.22 d         (in [0, 1] pixel units)
    contrast of the motifs = 1 - 0.4 d; distractor motifs (random kind, random hue) = round(2.5 d)

So a shallow exit reads easy samples from colour and motif content but is near a coin flip between mirror
classes on hard ones, while a deeper network can use the arrangement. tests/test_data_synthetic.py checks
this with a one-layer and a three-layer network. Generation is vectorised apart from a loop over motifs
placed, and takes about a second for the default 10,000 + 2,000 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGE_SIZE = 32  # pixels per side
MOTIF = 7  # motif size in pixels
GAP = 1  # pixels between the two motifs of a pair
NUM_TRAIN = 10000
NUM_TEST = 2000
# Ordered motif pairs (A, B), one per class; every unordered pair appears in both orders.
CLASS_PAIRS = ((0, 1), (1, 0), (2, 3), (3, 2), (4, 0), (0, 4), (1, 3), (3, 1), (2, 4), (4, 2))
GENERATOR_VERSION = 1  # bump when the images change, so fingerprints and caches change with them


@dataclass(frozen=True)
class SyntheticSplit:
    images: torch.Tensor  # uint8 [N, 3, 32, 32]
    labels: torch.Tensor  # int64 [N]
    difficulty: torch.Tensor  # float32 [N] in [0, 1]; 0 = easiest


def _motifs() -> torch.Tensor:
    """Five 7x7 motifs with values in [0, 1]: horizontal bar, vertical bar, diagonal, ring, disc."""
    y, x = torch.meshgrid(torch.arange(MOTIF), torch.arange(MOTIF), indexing="ij")
    centre = (MOTIF - 1) / 2
    radius = ((y - centre) ** 2 + (x - centre) ** 2).float().sqrt()
    return torch.stack(
        [
            ((y - centre).abs() <= 1).float(),  # horizontal bar, 3 px thick
            ((x - centre).abs() <= 1).float(),  # vertical bar
            ((y - x).abs() <= 1).float(),  # diagonal, top-left to bottom-right
            ((radius >= 2.0) & (radius <= 3.2)).float(),  # ring
            (radius <= 2.2).float(),  # disc
        ]
    )


def _hues(hue: torch.Tensor) -> torch.Tensor:
    """Fully saturated, full-value RGB colours [N, 3] in [0, 1] for hues in [0, 1) (HSV -> RGB with s = v = 1)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6.0 * hue[:, None]) % 6.0
    return 1.0 - torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def generate_split(num: int, generator: torch.Generator) -> SyntheticSplit:
    size = IMAGE_SIZE
    labels = torch.randint(len(CLASS_PAIRS), (num,), generator=generator)
    difficulty = torch.rand(num, generator=generator)
    d = difficulty[:, None, None, None]

    class_colour = _hues(labels.float() / len(CLASS_PAIRS))
    random_colour = _hues(torch.rand(num, generator=generator))
    colour = (1 - difficulty[:, None]) * class_colour + difficulty[:, None] * random_colour  # [N, 3]

    # A dim background tint carrying the same mixed hue (its own random part): the easy cue a linear probe sees.
    background_hue = _hues(torch.rand(num, generator=generator))
    tint = (1 - difficulty[:, None]) * class_colour + difficulty[:, None] * background_hue
    # Painted channels-last ([N, H, W, 3]) so that each motif stamp is one indexed write.
    images = (0.1 + 0.3 * tint)[:, None, None, :].expand(num, size, size, 3).clone()
    contrast = 1 - 0.4 * d

    motifs = _motifs()
    pairs = torch.tensor(CLASS_PAIRS)[labels]  # [N, 2]
    width = 2 * MOTIF + GAP
    top = torch.randint(size - MOTIF + 1, (num,), generator=generator)
    left = torch.randint(size - width + 1, (num,), generator=generator)
    for slot, offset in ((0, 0), (1, MOTIF + GAP)):
        _paint(images, motifs[pairs[:, slot]], top, left + offset, colour, contrast)

    # Distractors: single motifs of random kind and hue, more of them for harder samples.
    count = torch.round(2.5 * difficulty).long()
    for index in range(int(count.max()) if num else 0):
        active = count > index
        kind = torch.randint(len(motifs), (num,), generator=generator)
        where_y = torch.randint(size - MOTIF + 1, (num,), generator=generator)
        where_x = torch.randint(size - MOTIF + 1, (num,), generator=generator)
        hue = _hues(torch.rand(num, generator=generator))
        strength = 0.7 * active.float() * contrast.flatten()
        _paint(images, motifs[kind], where_y, where_x, hue, strength)

    sigma = 0.04 + 0.22 * d
    images = images.permute(0, 3, 1, 2) + sigma * torch.randn(num, 3, size, size, generator=generator)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return SyntheticSplit(images, labels, difficulty)


def _paint(images, stamps, top, left, colour, strength) -> None:
    """Blend one 7x7 stamp per image (alpha = stamp * strength) in `colour` at (top, left), in place.

    images: float [N, H, W, 3] contiguous; stamps [N, 7, 7]; colour [N, 3]; strength [N, 1, 1, 1].
    """
    num, height, width, _ = images.shape
    rows = top[:, None] + torch.arange(MOTIF)  # [N, 7]
    cols = left[:, None] + torch.arange(MOTIF)
    pixel = (torch.arange(num)[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]  # [N, 7, 7]
    flat = images.view(-1, 3)
    region = flat[pixel]  # [N, 7, 7, 3]
    alpha = stamps[..., None] * strength.reshape(num, 1, 1, 1)
    flat[pixel] = (1 - alpha) * region + alpha * colour[:, None, None, :]


def generate_synthetic(seed: int = 0, num_train: int = NUM_TRAIN, num_test: int = NUM_TEST) -> dict[str, SyntheticSplit]:
    """{"train", "test"} splits, a pure function of (seed, sizes, GENERATOR_VERSION)."""
    generator = torch.Generator().manual_seed(1_000_003 * GENERATOR_VERSION + int(seed))
    return {"train": generate_split(num_train, generator), "test": generate_split(num_test, generator)}
