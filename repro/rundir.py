"""Run directories at the file-system level: their file names, atomic writes, and finding runs.

A run directory (`runs/<name>/`) is the unit of reproducibility: the trainer writes its config, environment,
state, per-epoch metrics, checkpoints and log; `repro eval` adds the stored outputs, evaluation and timing;
`repro sweep` adds the sweep and calibration; `repro report` reads them all. What each file holds, and how
it is validated when read, is defined in repro.artifacts; this module gives it the pieces. Every write goes
to a temporary file in the same folder and is renamed into place, so a crash (even `kill -9`) never leaves
a half-written file: a reader sees the old version or the new one. Checkpoints are read with
`weights_only=True`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from repro.errors import ReproError, error_reason

# File names, defined once.
CONFIG = "config.json"  # the resolved training config: enough to rebuild the run
ENV = "env.json"  # python/torch versions, device, git commit, dataset fingerprint, seed
STATE = "state.json"  # running | finished | interrupted | failed, the epoch reached, the error
METRICS = "metrics.csv"  # one row per epoch
CHECKPOINT = "checkpoint.pt"  # best weights (by validation loss) with their config
LAST = "last.pt"  # full training state after the last finished epoch, to resume; deleted once finished
LOG = "train.log"  # human-readable training log
OUTPUTS = "outputs.pt"  # every exit's raw outputs on val and test (repro eval)
EVAL = "eval.json"  # per-exit accuracy, costs, the default operating point (repro eval)
TIMING = "timing.json"  # measured latencies and speed-ups (repro eval --timing)
SWEEP = "sweep.csv"  # threshold sweep: accuracy vs cost for every criterion (repro sweep)
SWEEP_SOURCE = "sweep.source.json"  # the checkpoint and sweep.csv hashes the sweep was computed from
CALIBRATION = "calibration.json"  # threshold chosen on validation for a budget (repro sweep)
EXIT_POLICIES = "exit_policies.json"  # exit decisions fitted on held-out data after training (repro fit-gates)


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def __str__(self) -> str:
        return str(self.path)


# ---------------------------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file owner-only (0600); give it the mode a plain open() would, so reports and
        # runs can be shared and served.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(value):
    """Tensors, numpy scalars and non-finite floats -> plain JSON (NaN/inf become null)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def save_torch(path: Path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write rows as CSV, atomically. Columns: every key of every row, in first-seen order, empty where a row
    lacks one (a run resumed from a last.pt of an older repro has rows without the columns added since)."""
    buffer = io.StringIO()
    if rows:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=fieldnames, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(_jsonable(rows))
    atomic_write_text(path, buffer.getvalue())


def append_log(run: RunDir, line: str) -> None:
    """Append one line to train.log (append-only: a crash can at worst cut the last line short)."""
    run.path.mkdir(parents=True, exist_ok=True)
    with open(run.file(LOG), "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()


# ---------------------------------------------------------------------------------------------- reads


def read_json(path: Path, what: str | None = None):
    path = Path(path)
    what = what or path.name
    if not path.is_file():
        raise ReproError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReproError(f"{path} is not valid JSON ({error}); it is corrupt or was edited by hand") from None


def read_csv(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ReproError(f"{path.name} not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (csv.Error, UnicodeDecodeError) as error:  # NUL bytes, a binary file: one error type for callers
        raise ValueError(str(error)) from None


def load_torch(path: Path, what: str | None = None, map_location="cpu"):
    """torch.load with weights_only=True; a missing or corrupt file is a ReproError, not a traceback."""
    path = Path(path)
    what = what or path.name
    if not path.is_file():
        raise ReproError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file (RuntimeError, EOFError, pickle errors)
        reason = error_reason(error)  # torch's messages run long: the first line, whole words
        raise ReproError(f"{path} is corrupt or not a repro checkpoint ({reason})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- run folders


def create_run_dir(path: Path, overwrite: bool = False) -> RunDir:
    """A fresh run directory. An existing non-empty one is refused unless `overwrite` (then emptied)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ReproError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ReproError(
                f"run directory {path} already exists; pass --overwrite to replace it or --resume {path} to continue it"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def open_run(path: Path) -> RunDir:
    """An existing run directory, or a one-line error saying what is wrong with the path."""
    path = Path(path)
    if not path.exists():
        raise ReproError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise ReproError(f"{path} is not a folder, so not a run directory")
    if not is_run_dir(path):
        raise ReproError(f"{path} is not a run directory (it has no {CONFIG}); create one with `repro train`")
    return RunDir(path)


def find_runs(paths) -> list[RunDir]:
    """Run directories named directly, or found anywhere below the given folders, sorted by path."""
    found: dict[Path, RunDir] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReproError(f"{path} does not exist: give run directories or folders of runs (train one with `repro train`)")
        if is_run_dir(path):
            found[path.resolve()] = RunDir(path)
            continue
        if not path.is_dir():
            raise ReproError(f"{path} is not a run directory or a folder of runs")
        for config in sorted(path.rglob(CONFIG)):
            found[config.parent.resolve()] = RunDir(config.parent)
    if not found:
        names = ", ".join(str(p) for p in paths)
        raise ReproError(f"no runs found in {names} (a run directory holds {CONFIG}); train one with `repro train`")
    return sorted(found.values(), key=lambda run: str(run.path))
