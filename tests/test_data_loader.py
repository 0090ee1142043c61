"""Seeded splits and subsets, and the device loader: crop/flip against a per-image reference, normalisation
values computed by hand, and shuffling that depends only on (seed, epoch)."""

from __future__ import annotations

import pytest
import torch

from repro.data import DeviceLoader, ImageDataset, augment_batch, make_splits
from repro.errors import ReproError


def identified_dataset(per_class_train, per_class_test, channels=3, size=8) -> ImageDataset:
    """Images whose pixel (0, 0, 0) / (0, 0, 1) encode their index, so splits can be checked by identity."""

    def build(per_class, offset):
        labels = torch.cat([torch.full((count,), label) for label, count in enumerate(per_class)])
        images = torch.randint(0, 256, (len(labels), channels, size, size), generator=torch.Generator().manual_seed(offset), dtype=torch.uint8)
        ids = torch.arange(len(labels)) + offset
        images[:, 0, 0, 0] = (ids % 256).to(torch.uint8)
        images[:, 0, 0, 1] = (ids // 256).to(torch.uint8)
        return images, labels

    splits = {"train": build(per_class_train, 0), "test": build(per_class_test, 10_000)}
    classes = [f"c{i}" for i in range(len(per_class_train))]
    return ImageDataset("toy", classes, splits, "toy", (0.5,) * channels, (0.25,) * channels)


def ids(split) -> list[int]:
    images = split[0]
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


# ------------------------------------------------------------------------------------------------ splits


def test_split_is_80_20_per_class_disjoint_and_deterministic():
    dataset = identified_dataset([50, 30, 20], [5, 5, 5])
    splits = make_splits(dataset, val_fraction=0.2, seed=7)
    assert torch.bincount(splits["val"][1]).tolist() == [10, 6, 4]  # round(0.2 * n_c) per class
    assert torch.bincount(splits["train"][1]).tolist() == [40, 24, 16]
    train_ids, val_ids = ids(splits["train"]), ids(splits["val"])
    assert sorted(train_ids + val_ids) == list(range(100))  # a partition of the training pool
    assert train_ids == sorted(train_ids)  # ascending order: shuffling is the loader's job
    assert ids(splits["test"]) == list(range(10_000, 10_015))
    assert ids(make_splits(dataset, val_fraction=0.2, seed=7)["val"]) == val_ids
    assert ids(make_splits(dataset, val_fraction=0.2, seed=8)["val"]) != val_ids
    # Labels stay attached to their images.
    labels_by_id = dict(zip(ids(dataset.splits["train"]), dataset.splits["train"][1].tolist()))
    assert [labels_by_id[i] for i in val_ids] == splits["val"][1].tolist()


def test_subset_is_class_balanced_with_a_fifth_for_test():
    dataset = identified_dataset([60, 60, 60, 60], [20, 20, 20, 20])
    splits = make_splits(dataset, seed=1, subset=42)
    pool = torch.cat([splits["train"][1], splits["val"][1]])
    assert torch.bincount(pool).tolist() == [11, 11, 10, 10]  # 42 // 4 each, remainder to the first classes
    assert torch.bincount(splits["test"][1]).tolist() == [2, 2, 2, 2]  # 42 // 5 = 8
    again = make_splits(dataset, seed=1, subset=42)
    assert ids(again["train"]) == ids(splits["train"]) and ids(again["test"]) == ids(splits["test"])
    assert set(ids(make_splits(dataset, seed=2, subset=42)["train"])) != set(ids(splits["train"]))


def test_bad_split_requests():
    dataset = identified_dataset([5, 5], [2, 2])
    for fraction in (0.0, 1.0):  # the same rule as TrainConfig: training needs a validation split
        with pytest.raises(ReproError, match=r"--val-fraction must be in \(0, 1\)"):
            make_splits(dataset, val_fraction=fraction)
    with pytest.raises(ReproError, match="subset of 11 images asked for, but the split holds only 10"):
        make_splits(dataset, subset=11)


# ------------------------------------------------------------------------------------------------ augmentation


def reference_crop_flip(image, top, left, flip, pad=4):
    """Per-image, per-pixel reference: zero padding, crop at (top, left), optional horizontal mirror."""
    channels, height, width = image.shape
    out = torch.zeros_like(image)
    for i in range(height):
        for j in range(width):
            source_j = width - 1 - j if flip else j
            y, x = top + i - pad, left + source_j - pad
            if 0 <= y < height and 0 <= x < width:
                out[:, i, j] = image[:, y, x]
    return out


def test_augment_batch_matches_the_per_image_reference():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 10, 10), generator=generator, dtype=torch.uint8)
    top = torch.tensor([0, 8, 4, 2, 7, 4])
    left = torch.tensor([8, 0, 4, 5, 1, 4])
    flip = torch.tensor([False, True, False, True, True, False])
    out = augment_batch(images, top, left, flip)
    for b in range(6):
        assert torch.equal(out[b], reference_crop_flip(images[b], int(top[b]), int(left[b]), bool(flip[b])))
    assert torch.equal(out[5], images[5])  # centre crop without flip is the identity
    # Image 1, by hand: top 8 -> output row i reads row i + 4 (rows 6..9 are padding); left 0 then mirrored ->
    # output column j reads column 5 - j (columns 6..9 are padding).
    assert int(out[1, :, 6:, :].abs().sum()) == 0 and int(out[1, :, :, 6:].abs().sum()) == 0
    assert torch.equal(out[1, :, 0, 0], images[1, :, 4, 5]) and torch.equal(out[1, :, 5, 2], images[1, :, 9, 3])


def test_normalisation_values_by_hand():
    images = torch.full((4, 2, 3, 3), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    images[1] = 255
    labels = torch.tensor([3, 1, 4, 1])
    loader = DeviceLoader(images, labels, batch_size=4, device="cpu", mean=(0.1, 0.2), std=(0.5, 0.25))
    (x, y), = list(loader)
    assert x.dtype == torch.float32 and y.tolist() == [3, 1, 4, 1]
    assert x[0, 0, 1, 1].item() == pytest.approx((0.2 - 0.1) / 0.5)  # 0.2
    assert x[0, 1, 2, 0].item() == pytest.approx(0.0, abs=1e-6)  # (0.2 - 0.2) / 0.25
    assert x[1, 1, 0, 0].item() == pytest.approx((1.0 - 0.2) / 0.25)  # 3.2


def test_loader_batches_cover_every_image_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    labels = torch.arange(10)
    loader = DeviceLoader(images, labels, batch_size=4, device="cpu", mean=(0.0,), std=(1 / 255,), shuffle=True, seed=3)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    # With mean 0 and std 1/255 the normalised value is the raw pixel: images stay with their labels.
    assert all(torch.equal(x[:, 0, 0, 0], y.float()) for x, y in batches)
    dropping = DeviceLoader(images, labels, 4, "cpu", (0.0,), (1.0,), drop_last=True)
    assert len(dropping) == 2 and [len(y) for _, y in dropping] == [4, 4]


def test_randomness_depends_only_on_seed_and_epoch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (50, 3, 8, 8), generator=generator, dtype=torch.uint8)
    labels = torch.arange(50)

    def make(seed):
        return DeviceLoader(images, labels, 16, "cpu", (0.5,) * 3, (0.2,) * 3, shuffle=True, seed=seed, crop=True, flip=True)

    def epoch_batches(loader, epoch):
        loader.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in loader]

    running = make(5)
    history = [epoch_batches(running, epoch) for epoch in range(3)]
    resumed = epoch_batches(make(5), 2)  # a fresh loader jumping straight to epoch 2, as after a resume
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(history[2], resumed))
    assert not torch.equal(history[0][0][1], history[1][0][1])  # another epoch, another order
    assert not torch.equal(epoch_batches(make(6), 0)[0][1], history[0][0][1])  # another seed too


def test_loader_augmentation_is_the_planned_crop_and_flip():
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (40, 3, 8, 8), generator=generator, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(40), 40, "cpu", (0.0,) * 3, (1 / 255,) * 3, shuffle=True, seed=1, crop=True, flip=True)
    loader.set_epoch(4)
    plan = loader.epoch_plan()
    (x, y), = list(loader)
    assert torch.equal(y, plan["order"])
    for b in range(40):
        expected = reference_crop_flip(images[int(plan["order"][b])], int(plan["top"][b]), int(plan["left"][b]), bool(plan["flip"][b]))
        assert torch.equal(x[b].round().to(torch.uint8), expected)
    assert 0 < int(plan["flip"].sum()) < 40 and len(set(plan["top"].tolist())) > 3


def test_loader_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), 1, "cpu", (0, 0, 0), (1, 1, 1))
