"""Finding a dataset's files, fetching them when asked, and turning them into an `ImageDataset` via the cache.

Search order: DATA_DIR/<name>, DATA_DIR, then the dataset's system folders (Fashion-MNIST: Debian's
/usr/share/datasets/fashion-mnist). DATA_DIR defaults to ./data or $REPRO_DATA; the cache folder to
DATA_DIR/.cache or $REPRO_CACHE. Official archives are md5-checked before their first decode (a cache hit
skips the check: the cache key already pins the exact file by size and mtime).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from repro.data import cache
from repro.data.dataset import ImageDataset, channel_stats, tensor_fingerprint
from repro.data.download import check_file, fetch_file
from repro.data.registry import DatasetSpec, default_data_dir, download_dir, get_spec, search_dirs
from repro.errors import ReproError


@dataclass(frozen=True)
class Source:
    """Where a dataset was found: the paths its reader takes, and whether they are the official archives."""

    paths: tuple[Path, ...]
    verifiable: bool  # True: paths are spec.files (in order) and have published md5s

    @property
    def label(self) -> str:
        folders = sorted({str(p.parent) for p in self.paths})
        return str(self.paths[0]) if len(self.paths) == 1 else f"{', '.join(folders)} ({len(self.paths)} files)"


def resolve_data_dir(data_dir: Path | None) -> Path:
    return Path(data_dir) if data_dir is not None else default_data_dir()


def resolve_cache_dir(spec: DatasetSpec, data_dir: Path | None, cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("REPRO_CACHE"):
        return Path(os.environ["REPRO_CACHE"])
    # imagefolder's data_dir is the dataset itself (possibly a read-only tarball): cache beside the default.
    base = default_data_dir() if spec.needs_root or data_dir is None else Path(data_dir)
    return base / cache.CACHE_FOLDER


def locate(spec: DatasetSpec, data_dir: Path) -> Source | None:
    """The dataset's files under `data_dir` (or the system folders), or None when they are not there."""
    if spec.needs_root:
        return Source((Path(data_dir),), verifiable=False) if Path(data_dir).exists() else None
    folders = search_dirs(spec, data_dir)
    for folder in folders:
        paths = tuple(folder / remote.filename for remote in spec.files)
        if paths and all(path.is_file() for path in paths):
            return Source(paths, verifiable=True)
    if spec.extracted:
        for folder in folders:
            if (folder / spec.extracted).is_dir():
                return Source((folder / spec.extracted,), verifiable=False)
    if "valid" in spec.splits and (Path(data_dir) / spec.name / "train").is_dir():
        return Source((Path(data_dir) / spec.name,), verifiable=False)  # an extracted CINIC-10 tree
    return None


def missing_message(spec: DatasetSpec, data_dir: Path) -> str:
    if spec.needs_root:
        return (
            f"image folder {data_dir} does not exist; pass --data-dir ROOT, a folder or .tar.gz holding "
            f"ROOT/{{train,test[,valid]}}/<class>/*.png|jpg"
        )
    wanted = " + ".join(remote.filename for remote in spec.files)
    if spec.extracted:
        wanted += f" (or the extracted {spec.extracted}/)"
    where = ", ".join(str(folder) for folder in search_dirs(spec, data_dir))
    return (
        f"dataset {spec.name} not found: looked for {wanted} in {where}; "
        f"fetch it with `repro data fetch {spec.name} --data-dir {data_dir}`"
    )


def verify_source(spec: DatasetSpec, source: Source) -> list[Path]:
    """md5-check the official files of `source`; the paths checked, or a ReproError on a mismatch."""
    if not source.verifiable:
        return []
    for path, remote in zip(source.paths, spec.files):
        check_file(path, remote)
    return list(source.paths)


def fetch_dataset(name: str, data_dir: Path | None = None, progress: bool = True) -> list[tuple[Path, str]]:
    """Make the dataset's official files present and verified: [(path, "present" | "downloaded")]."""
    spec = get_spec(name)
    if spec.embedded:
        return []
    if spec.needs_root:
        raise ReproError("imagefolder reads your own ROOT folder or .tar.gz; there is nothing to fetch")
    data_dir = resolve_data_dir(data_dir)
    found = locate(spec, data_dir)
    if found is not None and not found.verifiable:
        return [(found.paths[0], "present (extracted folder; no published checksum)")]
    if found is not None and found.verifiable and found.paths[0].parent != download_dir(spec, data_dir):
        verify_source(spec, found)  # e.g. Debian's Fashion-MNIST: already here, nothing to download
        return [(path, "present") for path in found.paths]
    results = []
    target = download_dir(spec, data_dir)
    for remote in spec.files:
        path = target / remote.filename
        if path.is_file():
            try:
                check_file(path, remote)
                results.append((path, "present"))
                continue
            except ReproError:
                pass  # corrupt or partial copy: download it again over the top
        results.append((fetch_file(remote, target, progress=progress), "downloaded"))
    return results


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    seed: int = 0,
    download: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Load a registered dataset as whole uint8 splits (see ImageDataset); `seed` only affects `synthetic`."""
    spec = get_spec(name)
    if spec.embedded:
        return _synthetic(seed)
    if spec.needs_root and data_dir is None:
        raise ReproError("imagefolder needs --data-dir ROOT: a folder or .tar.gz holding ROOT/{train,test[,valid]}/<class>/*")
    data_dir = resolve_data_dir(data_dir)
    source = locate(spec, data_dir)
    if source is None and download and not spec.needs_root:
        fetch_dataset(name, data_dir, progress=progress)
        source = locate(spec, data_dir)
    if source is None:
        raise ReproError(missing_message(spec, data_dir))

    folder = resolve_cache_dir(spec, data_dir, cache_dir)
    key = cache.cache_key(spec.name, list(source.paths))
    path = cache.cache_path(folder, spec.name, key, source.paths)
    payload = cache.read_cache(path)
    if payload is None:
        payload = _decode(spec, source)
        cache.write_cache(path, payload)
    return ImageDataset(
        name=spec.name,
        classes=list(payload["classes"]),
        splits={split: (entry["images"], entry["labels"]) for split, entry in payload["splits"].items()},
        fingerprint=payload["fingerprint"],
        mean=tuple(payload["mean"]),
        std=tuple(payload["std"]),
        source=payload["source"],
    )


def _decode(spec: DatasetSpec, source: Source) -> dict:
    """Read the source with its format's reader (after the md5 check) into a cache payload."""
    verify_source(spec, source)
    if spec.name in ("cifar10", "cifar100"):
        from repro.data.cifar import read_cifar

        splits, classes = read_cifar(source.paths[0], spec.name)
    elif spec.name == "fashion-mnist":
        splits, classes = _read_fashion_mnist(source), list(spec.classes)
    else:  # cinic10 and imagefolder: class-folder trees
        from repro.data.imagefolder import read_image_folder

        required = ("train", "valid", "test") if "valid" in spec.splits else ("train", "test")
        splits, classes = read_image_folder(source.paths[0], required=required)
    mean, std = channel_stats(splits["train"][0])
    return {
        "format": cache.CACHE_FORMAT,
        "splits": {split: {"images": images, "labels": labels} for split, (images, labels) in splits.items()},
        "classes": list(classes),
        "fingerprint": tensor_fingerprint(splits, classes),
        "mean": list(mean),
        "std": list(std),
        "source": source.label,
    }


def _read_fashion_mnist(source: Source):
    import torch

    from repro.data.idx import read_idx_pair

    train_images, train_labels, test_images, test_labels = source.paths
    splits = {}
    for split, images_path, labels_path in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        images, labels = read_idx_pair(images_path, labels_path)
        splits[split] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype("int64")))
    return splits


def _synthetic(seed: int) -> ImageDataset:
    from repro.data.synthetic import generate_synthetic
    from repro.data.registry import SYNTHETIC_CLASSES

    generated = generate_synthetic(seed)
    splits = {split: (part.images, part.labels) for split, part in generated.items()}
    mean, std = channel_stats(splits["train"][0])
    return ImageDataset(
        name="synthetic",
        classes=list(SYNTHETIC_CLASSES),
        splits=splits,
        fingerprint=tensor_fingerprint(splits, SYNTHETIC_CLASSES),
        mean=mean,
        std=std,
        source=f"embedded (seed {seed})",
    )
