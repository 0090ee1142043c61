"""The in-memory dataset every reader produces: whole splits as uint8 tensors, plus what describes them.

`mean`/`std` are per-channel statistics of the train split in [0, 1] pixel units (what the loader
normalises with); `fingerprint` is a hash of the decoded pixels, labels and class names, so it is the
same whether the data came from a tarball or an extracted folder, and on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

STATS_CHUNK = 4096  # images per step when computing channel statistics (bounds the float64 temporary)


@dataclass
class ImageDataset:
    name: str
    classes: list[str]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (uint8 [N, C, H, W], int64 [N]), on the CPU
    fingerprint: str  # hash of the decoded data (see tensor_fingerprint)
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units, train split
    std: tuple[float, ...]
    source: str = ""  # where it was read from ("embedded" for synthetic)

    @property
    def channels(self) -> int:
        return int(self.splits["train"][0].shape[1])

    @property
    def image_size(self) -> int:
        return int(self.splits["train"][0].shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, list[int]]:
        """Images per class in each split (an independent check on what was read)."""
        return {
            split: torch.bincount(labels, minlength=self.num_classes).tolist()
            for split, (_, labels) in self.splits.items()
        }


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W], in [0, 1] pixel units."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], STATS_CHUNK):
        chunk = images[start : start + STATS_CHUNK].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def tensor_fingerprint(splits: dict[str, tuple[torch.Tensor, torch.Tensor]], classes) -> str:
    """sha256 (first 16 hex digits) over class names, split names, shapes and the raw bytes of every tensor."""
    digest = hashlib.sha256()
    digest.update("\n".join(classes).encode())
    for split in sorted(splits):
        images, labels = splits[split]
        digest.update(f"|{split}|{tuple(images.shape)}|{tuple(labels.shape)}|".encode())
        digest.update(images.contiguous().numpy().tobytes())
        digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
