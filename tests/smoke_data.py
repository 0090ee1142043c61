"""Which real data the end-to-end smoke run uses here: the best that this machine has.

The CIFAR-10 JPEG copy in ../shared/data (beside the repository) when present, else Fashion-MNIST from
Debian's dataset-fashion-mnist package, else the embedded synthetic set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CIFAR_JPEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@dataclass(frozen=True)
class SmokeDataset:
    name: str  # --dataset
    data_dir: Path | None  # --data-dir
    description: str  # for pytest's header
    report_label: str  # how the report names it


def smoke_dataset() -> SmokeDataset:
    if CIFAR_JPEG.is_file():
        return SmokeDataset("cifar10-jpeg", CIFAR_JPEG.parent, f"the CIFAR-10 JPEG copy ({CIFAR_JPEG})", "CIFAR-10 (JPEG copy)")
    if FASHION_MNIST.is_file():
        return SmokeDataset("fashion-mnist", None, f"Fashion-MNIST ({FASHION_MNIST.parent})", "Fashion-MNIST")
    return SmokeDataset("synthetic", None, "the synthetic set (no real data on this machine)", "synthetic")
