"""The decoded-tensor cache: the first load of a dataset writes its uint8 tensors to one file; later loads
read that file (a CIFAR-10-sized set in well under a second) instead of decoding again.

The cache file name carries a key over the source's identity -- for every source file its resolved path,
size and modification time (ns), plus the reader's format version and options -- so a changed, replaced
or touched source gets a new key and is decoded afresh, never served stale. A cache file that cannot be
read or does not hold what it should is deleted and rebuilt. Writes are atomic (rundir.save_torch).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from repro.errors import ReproError
from repro.rundir import load_torch, save_torch

CACHE_FORMAT = 2  # bump when the payload layout or any reader's output changes
CACHE_FOLDER = ".cache"


def source_signature(paths: list[Path]) -> list[list]:
    """[relative or absolute path, size in bytes, mtime in ns] for each file (folders: every file below them)."""
    rows = []
    for path in paths:
        path = Path(path).resolve()
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                stat = file.stat()
                rows.append([str(file), stat.st_size, stat.st_mtime_ns])
        else:
            stat = path.stat()
            rows.append([str(path), stat.st_size, stat.st_mtime_ns])
    return rows


def cache_key(name: str, sources: list[Path], options: dict | None = None) -> str:
    identity = {"format": CACHE_FORMAT, "name": name, "options": options or {}, "sources": source_signature(sources)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, name: str, key: str, sources=()) -> Path:
    """DIR/<name>-<where>-<key>.pt: `where` (a hash of the source paths) keeps two copies of one dataset in
    different places (two image folders, two cifar10 folders) from evicting each other's cache file;
    `key` changes with the sources' contents, so only the stale version of the same source is replaced."""
    where = hashlib.sha256("\n".join(str(Path(p).resolve()) for p in sources).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{name}-{where}-{key}.pt"


def read_cache(path: Path) -> dict | None:
    """The cached payload, or None when absent; a corrupt or malformed file is removed (and so rebuilt)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = load_torch(path)
        _check_payload(payload)
        return payload
    except (ReproError, KeyError, TypeError, AttributeError, ValueError):
        path.unlink(missing_ok=True)
        return None


def write_cache(path: Path, payload: dict) -> bool:
    """Store `payload` atomically and drop older cache files of the same dataset and source (same
    `<name>-<where>` prefix); False if the folder is read-only."""
    path = Path(path)
    name = path.name.rsplit("-", 1)[0]
    try:
        save_torch(path, payload)
    except OSError:
        return False  # a read-only or full disk: the data was decoded, only the speed-up is lost
    for old in path.parent.glob(f"{name}-*.pt"):
        if old != path and old.name.rsplit("-", 1)[0] == name:
            try:
                os.remove(old)
            except OSError:
                pass
    return True


def _check_payload(payload) -> None:
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        raise ValueError("not a cache payload of this version")
    for split, entry in payload["splits"].items():
        images, labels = entry["images"], entry["labels"]
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.dtype != torch.int64 or len(labels) != len(images):
            raise ValueError(f"split {split} is malformed")
    for key in ("classes", "fingerprint", "mean", "std", "source"):
        payload[key]  # noqa: B018 -- KeyError if missing
