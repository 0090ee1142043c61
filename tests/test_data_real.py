"""Real data: Fashion-MNIST from Debian's package and the CIFAR-10 JPEG copy in ../shared/data (each skipped,
with the reason, when absent): counts per class, shapes, value ranges, statistics and split sizes."""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from repro.data import load_dataset, make_splits
from repro.data.registry import CIFAR10_CLASSES, FASHION_MNIST_SYSTEM_DIR

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_JPEG = SHARED / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not (FASHION_MNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not in {FASHION_MNIST_SYSTEM_DIR} (apt-get install dataset-fashion-mnist)")
    empty = tmp_path_factory.mktemp("fashion-data")  # nothing here: the loader must fall back to Debian's copy
    return load_dataset("fashion-mnist", data_dir=empty, cache_dir=empty / "cache")


@pytest.fixture(scope="module")
def cifar_jpeg(tmp_path_factory):
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"CIFAR-10 JPEG copy not found at {CIFAR_JPEG}")
    cache = tmp_path_factory.mktemp("cifar-jpeg-cache")
    # Found by name in the data folder, like the official data sets, and md5-checked before its first decode.
    return load_dataset("cifar10-jpeg", data_dir=SHARED, cache_dir=cache), cache


def test_fashion_mnist_from_debian(fashion):
    assert fashion.source.startswith(str(FASHION_MNIST_SYSTEM_DIR))
    assert fashion.counts() == {"train": [6000] * 10, "test": [1000] * 10}
    images, labels = fashion.splits["train"]
    assert tuple(images.shape) == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert int(images.min()) == 0 and int(images.max()) == 255
    assert tuple(fashion.splits["test"][0].shape) == (10000, 1, 28, 28)
    # Published training-set statistics of Fashion-MNIST: mean 0.2860, std 0.3530.
    assert fashion.mean[0] == pytest.approx(0.2860, abs=5e-4) and fashion.std[0] == pytest.approx(0.3530, abs=5e-4)
    splits = make_splits(fashion, seed=0)
    assert torch.bincount(splits["train"][1]).tolist() == [4800] * 10
    assert torch.bincount(splits["val"][1]).tolist() == [1200] * 10
    assert len(splits["test"][1]) == 10000


def test_cifar10_jpeg_counts_match_an_independent_listing(cifar_jpeg):
    dataset, _ = cifar_jpeg
    with tarfile.open(CIFAR_JPEG) as archive:  # count .jpg members per split/class straight from the tarball
        listing = Counter(tuple(m.name.split("/")[1:3]) for m in archive if m.isfile() and m.name.endswith(".jpg"))
    assert dataset.classes == list(CIFAR10_CLASSES)
    for split in ("train", "test"):
        assert dataset.counts()[split] == [listing[(split, name)] for name in CIFAR10_CLASSES]
    assert dataset.counts() == {"train": [5000] * 10, "test": [1000] * 10}


def test_cifar10_jpeg_shapes_values_and_splits(cifar_jpeg):
    dataset, cache = cifar_jpeg
    images, _ = dataset.splits["train"]
    assert tuple(images.shape) == (50000, 3, 32, 32) and images.dtype == torch.uint8
    assert tuple(dataset.splits["test"][0].shape) == (10000, 3, 32, 32)
    assert int(images.min()) == 0 and int(images.max()) == 255
    # CIFAR-10's published channel means (0.4914, 0.4822, 0.4465); the JPEG copy is within a few thousandths.
    assert dataset.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=5e-3)
    splits = make_splits(dataset, seed=0)
    assert [len(splits[s][1]) for s in ("train", "val", "test")] == [40000, 10000, 10000]
    small = make_splits(dataset, seed=0, subset=500)
    assert torch.bincount(torch.cat([small["train"][1], small["val"][1]])).tolist() == [50] * 10
    assert torch.bincount(small["test"][1]).tolist() == [10] * 10
    # The second load comes from the cache and is the same data.
    again = load_dataset("cifar10-jpeg", data_dir=SHARED, cache_dir=cache)
    assert again.fingerprint == dataset.fingerprint and len(list(cache.glob("cifar10-jpeg-*.pt"))) == 1


def test_the_jpeg_copy_read_as_an_image_folder_is_the_same_data(cifar_jpeg, tmp_path):
    dataset, _ = cifar_jpeg
    folder = load_dataset("imagefolder", data_dir=CIFAR_JPEG, cache_dir=tmp_path)
    assert folder.fingerprint == dataset.fingerprint
