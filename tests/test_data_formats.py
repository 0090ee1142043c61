"""Readers of every dataset format on small archives written in the exact official layouts, the decoded-tensor
cache, and the damaged-input errors (checksum, truncation, bad images)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from data_fixtures import (
    CLASSES10,
    FASHION_FILES,
    image_tree,
    md5,
    write_cifar_archive,
    write_fashion_mnist,
    write_tree_archive,
    write_tree_folder,
)
from repro.data import load_dataset, make_splits
from repro.data import registry
from repro.errors import ReproError


def pin_md5(monkeypatch, name, *paths):
    """Make the registry expect these files' md5s (the tests' archives stand in for the official ones)."""
    spec = registry.SPECS[name]
    files = tuple(dataclasses.replace(remote, md5=md5(path), content_md5=None) for remote, path in zip(spec.files, paths))
    monkeypatch.setitem(registry.SPECS, name, dataclasses.replace(spec, files=files))


def cifar_pixel(batch, row, channel, y, x):
    """The official layout, by hand: 1024 red values, then green, then blue, each plane row-major."""
    return int(batch[b"data"][row][channel * 1024 + y * 32 + x])


# ------------------------------------------------------------------------------------------------ CIFAR


def test_cifar10_archive_reads_every_batch_in_order(tmp_path, monkeypatch):
    archive = tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz"
    batches = write_cifar_archive(archive, "cifar10", per_batch=20)
    pin_md5(monkeypatch, "cifar10", archive)
    dataset = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")

    images, labels = dataset.splits["train"]
    assert images.dtype == torch.uint8 and tuple(images.shape) == (100, 3, 32, 32)
    assert labels.dtype == torch.int64 and tuple(dataset.splits["test"][0].shape) == (20, 3, 32, 32)
    assert dataset.classes == CLASSES10 and dataset.channels == 3 and dataset.image_size == 32
    # Row 47 of train is row 7 of data_batch_3; check pixels against the byte layout computed by hand.
    batch3 = batches["data_batch_3"]
    for channel, y, x in [(0, 0, 0), (1, 5, 31), (2, 31, 17), (2, 13, 2)]:
        assert int(images[47, channel, y, x]) == cifar_pixel(batch3, 7, channel, y, x)
    assert int(labels[47]) == batch3[b"labels"][7] == (7 + 2) % 10
    test_batch = batches["test_batch"]
    assert int(dataset.splits["test"][0][19, 1, 30, 4]) == cifar_pixel(test_batch, 19, 1, 30, 4)
    # Each batch of 20 holds 2 images per class: 10 per class in train, 2 in test.
    assert dataset.counts() == {"train": [10] * 10, "test": [2] * 10}
    # Channel means against an independent numpy computation over the raw batches.
    raw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(100, 3, 1024)
    assert dataset.mean == pytest.approx(tuple(raw.mean(axis=(0, 2)) / 255.0), abs=1e-9)
    assert dataset.std == pytest.approx(tuple(raw.std(axis=(0, 2)) / 255.0), abs=1e-9)


def test_cifar10_extracted_folder_gives_the_same_data(tmp_path, monkeypatch):
    archive = tmp_path / "a" / "cifar10" / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, "cifar10", per_batch=10)
    pin_md5(monkeypatch, "cifar10", archive)
    from_archive = load_dataset("cifar10", data_dir=tmp_path / "a", cache_dir=tmp_path / "cache")
    with tarfile.open(archive) as handle:
        handle.extractall(tmp_path / "b", filter="data")
    from_folder = load_dataset("cifar10", data_dir=tmp_path / "b", cache_dir=tmp_path / "cache")
    assert from_folder.source.endswith("cifar-10-batches-py")
    assert from_folder.fingerprint == from_archive.fingerprint
    assert torch.equal(from_folder.splits["train"][0], from_archive.splits["train"][0])


def test_cifar100_uses_fine_labels_and_meta_names(tmp_path, monkeypatch):
    archive = tmp_path / "data" / "cifar-100-python.tar.gz"  # directly in DATA_DIR is accepted too
    batches = write_cifar_archive(archive, "cifar100", per_batch=20)
    pin_md5(monkeypatch, "cifar100", archive)
    dataset = load_dataset("cifar100", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert dataset.num_classes == 100 and dataset.classes[0] == "class00" and dataset.classes[99] == "class99"
    train_images, train_labels = dataset.splits["train"]
    assert tuple(train_images.shape) == (100, 3, 32, 32) and len(dataset.splits["test"][1]) == 20
    assert train_labels[:4].tolist() == [0, 7, 14, 21]  # fine labels (i * 7) % 100, not the coarse ones
    assert int(train_images[63, 2, 9, 30]) == cifar_pixel(batches["train"], 63, 2, 9, 30)


def test_cifar_checksum_mismatch_is_one_clear_error(tmp_path):
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, "cifar10", per_batch=4)  # md5 differs from the published one
    with pytest.raises(ReproError, match=r"checksum mismatch for .*cifar-10-python.tar.gz: md5 [0-9a-f]{32}, expected c58f30108f"):
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_truncated_and_non_archive_files(tmp_path, monkeypatch):
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, "cifar10", per_batch=50)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    pin_md5(monkeypatch, "cifar10", archive)  # the md5 passes; reading must still notice the cut
    with pytest.raises(ReproError, match="truncated or not a .tar.gz archive"):
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    archive.write_bytes(b"<html>this is an error page, not an archive</html>")
    pin_md5(monkeypatch, "cifar10", archive)
    with pytest.raises(ReproError, match="truncated or not a .tar.gz archive"):
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_cifar_archive_missing_a_batch_or_with_a_hostile_pickle(tmp_path, monkeypatch):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, batch in write_cifar_archive(tmp_path / "x.tar.gz", "cifar10", per_batch=2).items():
        if name != "data_batch_3":
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ReproError, match="lacks data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")

    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Hostile()}, protocol=2))
    with pytest.raises(ReproError, match="data_batch_3 is not a readable CIFAR batch .*not allowed"):
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ CINIC-10


def test_cinic10_tree_has_train_valid_test_and_its_own_val(tmp_path, monkeypatch):
    files = image_tree({"train": 3, "valid": 2, "test": 2}, CLASSES10, size=32)
    archive = tmp_path / "cinic10" / "CINIC-10.tar.gz"
    write_tree_archive(archive, files, extra={"README.md": b"CINIC-10", "imagenet-contributors.csv": b"a,b\n"})
    pin_md5(monkeypatch, "cinic10", archive)
    dataset = load_dataset("cinic10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert list(dataset.splits) == ["train", "valid", "test"]
    assert dataset.counts() == {"train": [3] * 10, "valid": [2] * 10, "test": [2] * 10}
    assert dataset.classes == CLASSES10
    # Classes in label order, files in name order within a class: train image 3 * 4 + 1 is deer's second file.
    expected = files["train/deer/train-4-0001.png"]
    assert torch.equal(dataset.splits["train"][0][13], torch.from_numpy(expected).permute(2, 0, 1))
    assert int(dataset.splits["train"][1][13]) == 4
    splits = make_splits(dataset, seed=0)
    assert torch.equal(splits["val"][0], dataset.splits["valid"][0])  # CINIC's own validation set, unchanged
    assert len(splits["train"][1]) == 30 and len(splits["test"][1]) == 20


# ------------------------------------------------------------------------------------------------ Fashion-MNIST idx


def test_fashion_mnist_idx_files_in_data_dir_come_first(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    train_images, train_labels, test_images, test_labels = write_fashion_mnist(folder, train=30, test=10)
    pin_md5(monkeypatch, "fashion-mnist", *(folder / name for name in FASHION_FILES))
    dataset = load_dataset("fashion-mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert dataset.source.startswith(str(folder))  # not Debian's copy in /usr/share
    images, labels = dataset.splits["train"]
    assert tuple(images.shape) == (30, 1, 28, 28) and dataset.channels == 1 and dataset.image_size == 28
    assert int(images[17, 0, 20, 3]) == int(train_images[17, 20, 3])
    assert labels.tolist() == [i % 10 for i in range(30)]
    assert dataset.splits["test"][1].tolist() == [(i + 3) % 10 for i in range(10)]
    assert dataset.mean == pytest.approx((train_images.mean() / 255.0,), abs=1e-9)


def test_truncated_idx_file(tmp_path, monkeypatch):
    import gzip

    folder = tmp_path / "fashion-mnist"
    write_fashion_mnist(folder)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    pin_md5(monkeypatch, "fashion-mnist", *(folder / name for name in FASHION_FILES))
    with pytest.raises(ReproError, match=r"t10k-images-idx3-ubyte.gz is truncated or padded: 7756 bytes, expected 7856"):
        load_dataset("fashion-mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ imagefolder


def test_imagefolder_folder_and_tarball_with_top_folder_agree(tmp_path):
    classes = ["cats", "dogs", "emus"]
    files = image_tree({"train": 4, "test": 2}, classes, size=8, seed=3)
    write_tree_folder(tmp_path / "root", files)
    write_tree_archive(tmp_path / "root.tar.gz", files, top="mydata")
    from_folder = load_dataset("imagefolder", data_dir=tmp_path / "root", cache_dir=tmp_path / "cache")
    from_archive = load_dataset("imagefolder", data_dir=tmp_path / "root.tar.gz", cache_dir=tmp_path / "cache")
    assert from_folder.classes == classes and from_folder.image_size == 8
    assert from_folder.counts() == {"train": [4, 4, 4], "test": [2, 2, 2]}
    assert from_folder.fingerprint == from_archive.fingerprint
    assert torch.equal(
        from_archive.splits["test"][0][3], torch.from_numpy(files["test/dogs/test-1-0001.png"]).permute(2, 0, 1)
    )


def test_imagefolder_grayscale_has_one_channel(tmp_path):
    write_tree_folder(tmp_path / "root", image_tree({"train": 2, "test": 1}, ["a", "b"], size=6, grey=True))
    dataset = load_dataset("imagefolder", data_dir=tmp_path / "root", cache_dir=tmp_path / "cache")
    assert dataset.channels == 1 and tuple(dataset.splits["train"][0].shape) == (4, 1, 6, 6)


def test_imagefolder_mixing_gray_and_colour_is_read_as_colour(tmp_path):
    # The first image in sorted order is gray; the colour ones must keep their colour, the gray ones
    # become three equal channels.
    colour = image_tree({"train": 2, "test": 1}, ["a", "b"], size=6)
    gray = image_tree({"train": 1}, ["a"], size=6, grey=True, seed=1)
    first_name = "train/a/0000-gray.png"
    files = {**colour, first_name: next(iter(gray.values()))}
    write_tree_folder(tmp_path / "root", files)
    dataset = load_dataset("imagefolder", data_dir=tmp_path / "root", cache_dir=tmp_path / "cache")
    images, labels = dataset.splits["train"]
    assert dataset.channels == 3 and tuple(images.shape) == (5, 3, 6, 6)
    gray_pixels = torch.from_numpy(files[first_name])
    assert all(torch.equal(images[0, c], gray_pixels) for c in range(3))
    colour_pixels = torch.from_numpy(files["train/a/train-0-0000.png"]).permute(2, 0, 1)
    assert torch.equal(images[1], colour_pixels)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no-train", r"has no train/ folder"),
        ("no-classes", r"train/ has no class folders"),
        ("empty-class", r"class folder train/b is empty"),
        ("unreadable", r"cannot read image .*root/test/a/broken.png"),
        ("odd-size", r"root/train/b/odd.png is 5x5, but the first image was 6x6"),
    ],
)
def test_imagefolder_bad_trees(tmp_path, damage, message):
    root = tmp_path / "root"
    write_tree_folder(root, image_tree({"train": 2, "test": 1}, ["a", "b"], size=6))
    if damage == "no-train":
        os.rename(root / "train", root / "training")
    elif damage == "no-classes":
        for path in sorted((root / "train").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    elif damage == "empty-class":
        for path in (root / "train" / "b").iterdir():
            path.unlink()
    elif damage == "unreadable":
        (root / "test" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif damage == "odd-size":
        from data_fixtures import png_bytes

        (root / "train" / "b" / "odd.png").write_bytes(png_bytes(np.zeros((5, 5, 3), dtype=np.uint8)))
    with pytest.raises(ReproError, match=message):
        load_dataset("imagefolder", data_dir=root, cache_dir=tmp_path / "cache")


def test_imagefolder_unreadable_image_inside_a_tarball_is_named(tmp_path):
    files = image_tree({"train": 1, "test": 1}, ["a"], size=4)
    write_tree_archive(tmp_path / "t.tar.gz", files, top="top", extra={"train/a/zz.jpg": b"garbage"})
    with pytest.raises(ReproError, match=r"cannot read image .*t.tar.gz:top/train/a/zz.jpg"):
        load_dataset("imagefolder", data_dir=tmp_path / "t.tar.gz", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ cache


def test_cache_serves_later_loads_and_never_a_changed_source(tmp_path, monkeypatch):
    from repro.data import cifar

    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, "cifar10", per_batch=4, seed=1)
    pin_md5(monkeypatch, "cifar10", archive)
    first = load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("cifar10-*.pt"))
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(cifar, "read_cifar", no_decoding)
    again = load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert again.fingerprint == first.fingerprint and torch.equal(again.splits["test"][0], first.splits["test"][0])

    # A different file under the same name: a new key, decoded afresh, the old cache file dropped.
    monkeypatch.undo()
    batches = write_cifar_archive(archive, "cifar10", per_batch=4, seed=2)
    pin_md5(monkeypatch, "cifar10", archive)
    changed = load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert changed.fingerprint != first.fingerprint
    assert int(changed.splits["train"][0][0, 0, 0, 0]) == cifar_pixel(batches["data_batch_1"], 0, 0, 0, 0)
    assert [p.name for p in (tmp_path / "cache").glob("cifar10-*.pt")] != [cached[0].name]
    assert len(list((tmp_path / "cache").glob("cifar10-*.pt"))) == 1


def test_two_image_folders_sharing_a_cache_keep_both(tmp_path, monkeypatch):
    from repro.data import imagefolder

    for seed, root in enumerate(("one", "two")):
        write_tree_folder(tmp_path / root, image_tree({"train": 2, "test": 1}, ["a", "b"], size=4, seed=seed))
        load_dataset("imagefolder", data_dir=tmp_path / root, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although its cache file should still be there")

    monkeypatch.setattr(imagefolder, "read_image_folder", no_decoding)
    for root in ("one", "two"):
        load_dataset("imagefolder", data_dir=tmp_path / root, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("garbage", [b"", b"not a torch file at all", b"PK\x03\x04 half a zip"])
def test_corrupt_cache_file_is_rebuilt(tmp_path, garbage):
    write_tree_folder(tmp_path / "root", image_tree({"train": 2, "test": 1}, ["a", "b"], size=4))
    first = load_dataset("imagefolder", data_dir=tmp_path / "root", cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").glob("imagefolder-*.pt")
    cache_file.write_bytes(garbage)
    rebuilt = load_dataset("imagefolder", data_dir=tmp_path / "root", cache_dir=tmp_path / "cache")
    assert rebuilt.fingerprint == first.fingerprint
    assert cache_file.stat().st_size > 1000  # written again, whole


# ------------------------------------------------------------------------------------------------ CIFAR-10 JPEG copy


def test_cifar10_jpeg_is_found_by_name_and_md5_checked(tmp_path, monkeypatch):
    files = image_tree({"train": 3, "test": 2}, list(CLASSES10), size=32, seed=5)
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    write_tree_archive(archive, files, top="cifar10-jpeg")
    # A tarball that is not the published one is refused before it is decoded.
    with pytest.raises(ReproError, match=r"checksum mismatch for .*cifar10-jpeg.tar.gz: .*expected da369a48"):
        load_dataset("cifar10-jpeg", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    pin_md5(monkeypatch, "cifar10-jpeg", archive)
    dataset = load_dataset("cifar10-jpeg", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert dataset.name == "cifar10-jpeg" and dataset.classes == list(CLASSES10)
    assert dataset.counts() == {"train": [3] * 10, "test": [2] * 10}
    # The extracted folder is accepted in place of the tarball, and holds the same images.
    write_tree_folder(tmp_path / "other" / "cifar10-jpeg", files)
    extracted = load_dataset("cifar10-jpeg", data_dir=tmp_path / "other", cache_dir=tmp_path / "cache")
    assert extracted.fingerprint == dataset.fingerprint
