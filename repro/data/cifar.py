"""Reader for the official CIFAR-10 / CIFAR-100 "python version" archives (Krizhevsky, 2009).

Each batch is a pickled dict with byte-string keys: b"data" is a uint8 array [N, 3072] (1024 red, then
1024 green, then 1024 blue values, rows top to bottom), b"labels" (CIFAR-10) or b"fine_labels" /
b"coarse_labels" (CIFAR-100) a list of ints. Class names are in `batches.meta` (b"label_names") or
`meta` (b"fine_label_names"). Batches are read straight from the tarball (or an extracted folder) into one
uint8 tensor [N, 3, 32, 32] per split. Unpickling is restricted to the numpy array constructors, so a
tampered archive cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from repro.data.archive import member_entries
from repro.errors import ReproError, error_reason

LAYOUT = {
    # variant: (train batches, test batch, meta file, label key, class-names key)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta", b"labels", b"label_names"),
    "cifar100": (["train"], "test", "meta", b"fine_labels", b"fine_label_names"),
}

# The only globals a CIFAR pickle needs: numpy's array reconstruction (module path differs across numpy 1/2).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2 (harmless: str -> bytes)
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # pickle raises many types for damaged input
        reason = error_reason(error, 100)
        raise ReproError(f"{where} is not a readable CIFAR batch ({type(error).__name__}: {reason})") from None
    if not isinstance(batch, dict):
        raise ReproError(f"{where} is not a CIFAR batch (a pickled dict)")
    return batch


def read_cifar(source: Path, variant: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Splits {"train", "test"} -> (uint8 [N, 3, 32, 32], int64 [N]) and the class names, from an archive or folder."""
    train_names, test_name, meta_name, label_key, names_key = LAYOUT[variant]
    wanted = set(train_names) | {test_name, meta_name}
    source = Path(source)
    if source.is_dir():
        raw = {name: (source / name).read_bytes() for name in wanted if (source / name).is_file()}
    else:
        raw = {}
        for member, data in member_entries(source, want=lambda n: n.rsplit("/", 1)[-1] in wanted):
            if data is not None:
                raw[member.rsplit("/", 1)[-1]] = data
    missing = sorted(wanted - set(raw))
    if missing:
        raise ReproError(f"{source} lacks {', '.join(missing)}: it is not the official {variant} python-version archive")

    meta = _unpickle(raw[meta_name], f"{source}:{meta_name}")
    if names_key not in meta:
        raise ReproError(f"{source}:{meta_name} has no {names_key!r} entry")
    classes = [name.decode() if isinstance(name, bytes) else str(name) for name in meta[names_key]]

    splits = {
        "train": _read_batches(source, [raw[n] for n in train_names], train_names, label_key, len(classes)),
        "test": _read_batches(source, [raw[test_name]], [test_name], label_key, len(classes)),
    }
    return splits, classes


def _read_batches(source, blobs, names, label_key, num_classes) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for blob, name in zip(blobs, names):
        where = f"{source}:{name}"
        batch = _unpickle(blob, where)
        if b"data" not in batch or label_key not in batch:
            raise ReproError(f"{where} lacks the {b'data'!r} or {label_key!r} entry")
        data = np.asarray(batch[b"data"])
        batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise ReproError(f"{where}: data {data.dtype} {data.shape} with {len(batch_labels)} labels is not a CIFAR batch")
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() >= num_classes):
            raise ReproError(f"{where}: labels outside 0..{num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
