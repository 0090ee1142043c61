"""Reader for class-folder image trees: ROOT/{train,test[,valid]}/<class>/*.png|jpg (CINIC-10's layout).

ROOT is a folder or a .tar.gz read in place; a single top-level folder inside either (as in
`cifar10-jpeg.tar.gz`, whose images sit under `cifar10-jpeg/`) is looked through. Class names are the
train split's folder names, sorted (label i = i-th name). Images are decoded once with PIL into uint8
[N, C, H, W] (C = 1 when the images are grayscale, else 3); the decoded tensors are then cached (cache.py),
so PIL never runs again for the same files. Within a class, images are ordered by file name.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from repro.data.archive import member_entries
from repro.errors import ReproError, error_reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_NAMES = ("train", "valid", "test")
LAYOUT = "ROOT/{train,test[,valid]}/<class>/*.png|jpg"
_GRAY_MODES = {"1", "L", "I", "I;16", "F"}


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def read_image_folder(root: Path, required=("train", "test")):
    """Splits -> (uint8 [N, C, H, W], int64 [N]) and class names, from a folder or .tar.gz tree."""
    root = Path(root)
    if not root.exists():
        raise ReproError(f"image folder {root} does not exist (expected {LAYOUT})")
    decoder = _Decoder(root)
    entries = _folder_entries(root, decoder) if root.is_dir() else _archive_entries(root, decoder)
    tree = _arrange(root, entries)
    for split in required:
        if split not in tree:
            raise ReproError(f"{root} has no {split}/ folder (expected {LAYOUT})")
    classes = sorted(tree["train"])
    if not classes:
        raise ReproError(f"{root}: train/ has no class folders (expected {LAYOUT})")
    for split, by_class in tree.items():
        if not by_class:
            raise ReproError(f"{root}: {split}/ has no class folders (expected {LAYOUT})")
        for name, files in by_class.items():
            if name not in classes:
                raise ReproError(f"{root}: class folder {split}/{name} has no counterpart in train/")
            if not files:
                raise ReproError(f"{root}: class folder {split}/{name} is empty (no .png or .jpg images)")
    splits = {}
    for split in sorted(tree, key=SPLIT_NAMES.index):
        by_class = tree[split]
        images, labels = [], []
        for label, name in enumerate(classes):
            for file_name, load in sorted(by_class.get(name, {}).items()):
                images.append(load())
                labels.append(label)
        if not images:
            raise ReproError(f"{root}: {split}/ holds no images")
        channels = max(image.shape[0] for image in images)
        stacked = np.stack([np.broadcast_to(image, (channels, *image.shape[1:])) for image in images])
        splits[split] = (torch.from_numpy(stacked), torch.tensor(labels, dtype=torch.int64))
    if decoder.colour:
        # A folder mixing grayscale and colour images is a colour data set: repeat the gray channel.
        splits = {name: (images.expand(-1, 3, -1, -1).contiguous(), labels) for name, (images, labels) in splits.items()}
    return splits, classes


def _folder_entries(root: Path, decoder):
    """(relative name, loader of the decoded image) per image file, (name + "/", None) per folder below root."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_dir():
            yield relative + "/", None
        elif _is_image(relative):
            yield relative, (lambda path=path, relative=relative: decoder(relative, path.read_bytes()))


def _archive_entries(root: Path, decoder):
    """As `_folder_entries`, for a tarball: images are decoded while streaming, so their bytes are not all held."""
    for name, data in member_entries(root, want=_is_image):
        if data is None:
            yield name, None
        else:
            array = decoder(name, data)
            yield name, (lambda array=array: array)


def _arrange(root: Path, entries) -> dict[str, dict[str, dict[str, object]]]:
    """{split: {class: {file name: loader}}}, looking through one optional top-level folder."""
    tree: dict[str, dict[str, dict[str, object]]] = {}
    prefixes = set()
    for name, load in entries:
        parts = name.rstrip("/").split("/")
        # Accept split/class/file and top/split/class/file (a single top-level folder).
        offset = 0 if parts[0] in SPLIT_NAMES else 1 if len(parts) > 1 and parts[1] in SPLIT_NAMES else None
        if offset is None:
            continue
        prefixes.add(parts[0] if offset else "")
        inner = parts[offset:]
        split = tree.setdefault(inner[0], {})
        if len(inner) >= 2:
            split.setdefault(inner[1], {})
        if load is not None and len(inner) == 3:
            split[inner[1]][inner[2]] = load
    if len(prefixes) > 1:
        tops = ", ".join(sorted(p or "." for p in prefixes))
        raise ReproError(f"{root} holds several dataset trees ({tops}); point to one of them (expected {LAYOUT})")
    return tree


class _Decoder:
    """Decodes image bytes to uint8 [C, H, W] (C = 1 for gray, 3 for colour); every image must share the first one's size."""

    def __init__(self, root: Path):
        self.root = root
        self.colour = False  # True once any image is in colour: then every image is read as RGB
        self.size = None  # (width, height) in pixels, from the first image

    def __call__(self, name: str, data: bytes) -> np.ndarray:
        where = f"{self.root}/{name}" if self.root.is_dir() else f"{self.root}:{name}"
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                if self.size is None:
                    self.size = image.size
                    if image.size[0] != image.size[1]:
                        raise ReproError(f"{where} is {image.size[0]}x{image.size[1]}: images must be square")
                if image.size != self.size:
                    raise ReproError(
                        f"{where} is {image.size[0]}x{image.size[1]}, but the first image was "
                        f"{self.size[0]}x{self.size[1]}; all images must have one size"
                    )
                # Each image keeps its own kind (1 or 3 channels) until all are read: the first image
                # being gray must not turn a colour folder gray.
                mode = "L" if image.mode in _GRAY_MODES else "RGB"
                self.colour |= mode == "RGB"
                array = np.asarray(image.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            if isinstance(error, ReproError):
                raise
            reason = error_reason(error, 100)
            raise ReproError(f"cannot read image {where} ({type(error).__name__}: {reason})") from None
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
