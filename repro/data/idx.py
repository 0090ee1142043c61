"""Reader for the idx format of (Fashion-)MNIST: a big-endian header, then raw uint8 values.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 = unsigned
byte), the number of dimensions, one big-endian uint32 per dimension, then the values in C order.
Files are usually gzipped (`*-idx3-ubyte.gz` images [N, 28, 28], `*-idx1-ubyte.gz` labels [N]).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from repro.errors import ReproError

UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array stored in an idx file (gzipped or not); a malformed or truncated file is a ReproError."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ReproError(f"{path} is truncated or not a gzip file ({type(error).__name__}); fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ReproError(f"{path} is not an idx file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype != UBYTE:
        raise ReproError(f"{path}: idx type 0x{dtype:02x} is not supported (only unsigned bytes, 0x08)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ReproError(f"{path} is truncated (header cut short)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise ReproError(f"{path} is truncated or padded: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 1, H, W] uint8 and labels [N] from one images file and its labels file."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ReproError(
            f"{images_path.name} ({images.shape}) and {labels_path.name} ({labels.shape}) do not form an "
            f"images [N, H, W] / labels [N] pair"
        )
    return images[:, None, :, :], labels
