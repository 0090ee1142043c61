"""Helpers for the data tests: small archives in the exact official layouts, and a loopback HTTP server.

Formats written here follow the datasets' own documentation:
- CIFAR python version (https://www.cs.toronto.edu/~kriz/cifar.html): pickled dicts with byte keys,
  b"data" uint8 [N, 3072] (R plane, G plane, B plane, each row-major), b"labels" / b"fine_labels".
- CINIC-10: {train,valid,test}/<class>/*.png at the top of the tarball.
- idx (Fashion-MNIST): big-endian header 0x00000803 + dims, then bytes; gzipped.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _add_dir(archive: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    archive.addfile(info)


def cifar_batches(variant: str, per_batch: int, seed: int = 0) -> dict[str, dict]:
    """The pickled dicts of a tiny CIFAR archive: {member name: dict with byte keys}."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        batches = {}
        for index, name in enumerate(names):
            labels = [int(v) for v in (np.arange(per_batch) + index) % 10]
            batches[name] = {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                b"filenames": [f"img_{name}_{i}.png".encode() for i in range(per_batch)],
            }
        batches["batches.meta"] = {
            b"num_cases_per_batch": per_batch,
            b"label_names": [c.encode() for c in CLASSES10],
            b"num_vis": 3072,
        }
        return batches
    fine = [f"class{i:02d}".encode() for i in range(100)]
    batches = {}
    for index, name in enumerate(("train", "test")):
        count = per_batch * (5 if name == "train" else 1)
        fine_labels = [int(v) for v in (np.arange(count) * 7 + index) % 100]
        batches[name] = {
            b"filenames": [f"{name}_{i}.png".encode() for i in range(count)],
            b"batch_label": name.encode(),
            b"fine_labels": fine_labels,
            b"coarse_labels": [v // 5 for v in fine_labels],
            b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        }
    batches["meta"] = {b"fine_label_names": fine, b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    return batches


def write_cifar_archive(path: Path, variant: str, per_batch: int = 20, seed: int = 0) -> dict[str, dict]:
    """A .tar.gz with the official folder name and members; returns the batches written."""
    folder = "cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python"
    batches = cifar_batches(variant, per_batch, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        _add_dir(archive, folder)
        _add_bytes(archive, f"{folder}/readme.html", b"<html></html>")
        for name, batch in batches.items():
            _add_bytes(archive, f"{folder}/{name}", pickle.dumps(batch, protocol=2))
    return batches


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_tree(per_class: dict[str, int], classes, size: int = 8, seed: int = 0, grey: bool = False):
    """{relative path: uint8 array [H, W, 3] (or [H, W])} for split/class/NNNN.png files."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, count in per_class.items():
        for label, name in enumerate(classes):
            for index in range(count):
                shape = (size, size) if grey else (size, size, 3)
                files[f"{split}/{name}/{split}-{label}-{index:04d}.png"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return files


def write_tree_archive(path: Path, files: dict[str, np.ndarray], top: str | None = None, extra: dict | None = None):
    """A .tar.gz of an image tree (optionally under one top-level folder), with folder entries like `tar czf`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{top}/" if top else ""
    with tarfile.open(path, "w:gz") as archive:
        folders = sorted({"/".join(name.split("/")[:depth]) for name in files for depth in (1, 2)})
        if top:
            _add_dir(archive, top)
        for folder in folders:
            _add_dir(archive, prefix + folder)
        for name, array in files.items():
            _add_bytes(archive, prefix + name, png_bytes(array))
        for name, data in (extra or {}).items():
            _add_bytes(archive, prefix + name, data)


def write_tree_folder(root: Path, files: dict[str, np.ndarray]) -> None:
    for name, array in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(array))


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def write_fashion_mnist(folder: Path, train: int = 30, test: int = 10, seed: int = 0):
    """The four gzipped idx files; returns (train images [N,28,28], train labels, test images, test labels)."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, size=(train, 28, 28), dtype=np.uint8),
        (np.arange(train) % 10).astype(np.uint8),
        rng.integers(0, 256, size=(test, 28, 28), dtype=np.uint8),
        ((np.arange(test) + 3) % 10).astype(np.uint8),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(FASHION_FILES, arrays):
        (folder / name).write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return arrays


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 -- http.server's naming
        status, body, declared = self.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@contextmanager
def loopback_server(routes: dict[str, tuple[int, bytes, int | None]]):
    """Serve {path: (status, body, declared Content-Length or None)} on 127.0.0.1; yields the base URL."""
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
