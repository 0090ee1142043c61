"""Downloading and checking the official files: stream to `<file>.part`, verify the md5, then rename.

A file only gets its final name after its checksum matched, so an interrupted or corrupt download is never
mistaken for a good one: the `.part` file is deleted on any failure, and a later `fetch` starts afresh.
Archives are opened only after this check (the readers never see an unverified download).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from repro.data.registry import RemoteFile
from repro.errors import ReproError

CHUNK = 1 << 20  # bytes read per step, for hashing and streaming
TIMEOUT = 30.0  # seconds without data before a download is abandoned


def md5_file(path: Path, gunzip: bool = False) -> str:
    """md5 of a file's bytes, or of its gunzipped payload when `gunzip`."""
    digest = hashlib.md5()
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path, remote: RemoteFile) -> None:
    """Raise a ReproError unless `path` has the published md5 (or, where given, the published payload md5)."""
    path = Path(path)
    actual = md5_file(path)
    if actual == remote.md5:
        return
    if remote.content_md5 is not None:
        try:
            if md5_file(path, gunzip=True) == remote.content_md5:
                return
        except (OSError, EOFError, zlib.error):
            pass  # not a readable gzip: report the file checksum below
    raise ReproError(
        f"checksum mismatch for {path}: md5 {actual}, expected {remote.md5}; "
        f"the file is corrupt or incomplete: delete it and fetch it again"
    )


def fetch_file(remote: RemoteFile, folder: Path, progress: bool = True) -> Path:
    """Download `remote` into `folder` (streamed to `<name>.part`), verify its md5, rename; return the path."""
    folder = Path(folder)
    if remote.url is None:
        raise ReproError(
            f"{remote.filename} cannot be downloaded (no public URL serves it); place it in {folder} or in the "
            f"folder given with --data-dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.filename
    partial = folder / (remote.filename + ".part")
    try:
        _stream(remote.url, partial, remote.filename, progress)
        check_file(partial, remote)
        os.replace(partial, target)
    except ReproError as error:
        partial.unlink(missing_ok=True)
        # The check names the .part file; the user only ever sees the final name.
        raise ReproError(str(error).replace(str(partial), f"{remote.url} (downloaded to {partial})")) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def _stream(url: str, partial: Path, label: str, progress: bool) -> None:
    """Copy `url` to `partial`, with a Rich progress bar on stderr; network failures become ReproErrors."""
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT)
    except urllib.error.HTTPError as error:
        error.close()  # an HTTPError holds the server's open response
        raise ReproError(f"download of {url} failed: the server answered HTTP {error.code} ({error.reason})") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ReproError(
            f"cannot download {url} ({reason}); no network? copy {partial.name[:-5]} into {partial.parent} by hand"
        ) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        bar = _progress_bar(progress)
        with bar, open(partial, "wb") as handle:
            task = bar.add_task(label, total=total)
            try:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(task, advance=len(chunk))
            except (OSError, http.client.HTTPException) as error:  # a dropped connection, IncompleteRead, timeout
                raise ReproError(
                    f"download of {url} was interrupted after {received} bytes ({type(error).__name__})"
                ) from None
    if total is not None and received != total:
        raise ReproError(f"download of {url} is truncated: got {received} of {total} bytes")


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from repro.console import err_console

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        disable=not enabled,
        transient=False,
    )
