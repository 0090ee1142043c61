"""Reading the regular files of a .tar.gz archive in one streaming pass, with damage reported as one line.

The readers (cifar.py, imagefolder.py) read archives in place instead of extracting them: nothing is
written beside the archive, and a read-only copy (e.g. ../shared/data) works. A truncated or non-archive
file raises a ReproError naming it, never a tarfile/zlib traceback.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from repro.errors import ReproError, error_reason

# What tarfile/gzip raise for a file that is cut short, not gzip at all, or not a tar inside.
DAMAGED = (tarfile.TarError, EOFError, zlib.error, OSError)


def member_entries(path: Path, want=None) -> Iterator[tuple[str, bytes | None]]:
    """Yield (name, bytes) for each regular file, and (name + "/", None) for each folder, in archive order.

    Names are normalised ("./a/b" -> "a/b"). `want(name) -> bool` selects which files are read (others
    are skipped without reading their bytes); folders are always yielded, so callers can spot empty ones.
    """
    path = Path(path)
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                name = name.strip("/")
                if not name:
                    continue
                if member.isdir():
                    yield name + "/", None
                elif member.isfile() and (want is None or want(name)):
                    handle = archive.extractfile(member)
                    yield name, handle.read()
    except DAMAGED as error:
        reason = error_reason(error, 100)
        raise ReproError(
            f"{path} is truncated or not a .tar.gz archive ({type(error).__name__}: {reason}); fetch or copy it again"
        ) from None
