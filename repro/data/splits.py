"""Train / validation / test splits and class-balanced subsets, all deterministic by seed.

As in the reproduction report of Scardapane et al. (ICASSP 2020), the official training set is split
80/20 into train and validation: validation drives early stopping and threshold calibration, and test is
used only for final numbers. The split is stratified (each class split 80/20) so small subsets stay
balanced. CINIC-10 brings its own validation set, which is used as "val" unchanged. Index sets are
returned in ascending order; shuffling is the loader's job.
"""

from __future__ import annotations

import torch

from repro.data.dataset import ImageDataset
from repro.errors import ReproError

Split = tuple[torch.Tensor, torch.Tensor]  # (uint8 images [N, C, H, W], int64 labels [N])


def _generator(seed: int, stream: int) -> torch.Generator:
    # One independent stream per purpose, so changing the subset does not reshuffle the val split's seed use.
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def balanced_subset(labels: torch.Tensor, count: int, num_classes: int, seed: int, stream: int = 1) -> torch.Tensor:
    """`count` indices, count // K per class (the first count % K classes one more), chosen at random by seed."""
    if count > len(labels):
        raise ReproError(f"subset of {count} images asked for, but the split holds only {len(labels)}")
    generator = _generator(seed, stream)
    chosen = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        quota = count // num_classes + (1 if label < count % num_classes else 0)
        if quota > len(members):
            raise ReproError(
                f"a balanced subset of {count} needs {quota} images of class {label}, but the split has {len(members)}"
            )
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:quota]])
    return torch.cat(chosen).sort().values


def stratified_split(labels: torch.Tensor, fraction: float, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, held-out) index sets: round(fraction * n_c) of each class's n_c images held out, by seed."""
    generator = _generator(seed, 2)
    keep, held = [], []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        cut = int(round(fraction * len(members)))
        held.append(order[:cut])
        keep.append(order[cut:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def make_splits(dataset: ImageDataset, val_fraction: float = 0.2, seed: int = 0, subset: int | None = None) -> dict[str, Split]:
    """{"train", "val", "test"} -> (images, labels). `subset` N: N training-pool images (before the
    train/val split; class-balanced) and N // 5 test images; for CINIC-10 also N // 5 of its validation set."""
    if not 0.0 < val_fraction < 1.0:  # the same rule as TrainConfig.validate: training needs a validation split
        raise ReproError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if subset is not None and subset < 1:
        raise ReproError(f"subset must be a positive number of images, got {subset}")
    classes = dataset.num_classes

    def take(split: Split, count: int | None, stream: int) -> Split:
        if count is None:
            return split
        index = balanced_subset(split[1], count, classes, seed, stream)
        return split[0][index], split[1][index]

    pool = take(dataset.splits["train"], subset, stream=1)
    test = take(dataset.splits["test"], None if subset is None else max(subset // 5, 1), stream=3)
    if "valid" in dataset.splits:
        val = take(dataset.splits["valid"], None if subset is None else max(subset // 5, 1), stream=4)
        return {"train": pool, "val": val, "test": test}
    keep, held = stratified_split(pool[1], val_fraction, classes, seed)
    return {"train": (pool[0][keep], pool[1][keep]), "val": (pool[0][held], pool[1][held]), "test": test}
