"""Where a run ran: device selection and the environment record saved as env.json.

env.json answers "could this number be reproduced, and on what?": python and torch versions, the device,
the git commit of the code (read from .git without running git, when the package sits in a checkout),
the data set's fingerprint and the seed.
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import torch

from repro.errors import ReproError, check_name

DEVICES = ("auto", "cpu", "cuda")


def select_device(name: str = "auto") -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is an error, not a silent fallback."""
    check_name("device", name, DEVICES)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ReproError("--device cuda was asked for but torch sees no CUDA GPU here; use --device cpu or auto")
    return torch.device(name)


def processor_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def describe_device(device) -> str:
    """'cpu: <processor> (N threads)' or 'cuda: <GPU name>'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {processor_name()} ({torch.get_num_threads()} threads)"


def describe_machine(device="cpu") -> dict:
    """What a benchmark figure was measured on, including how busy the machine was."""
    import os

    return {
        "device": describe_device(device),
        "cpu": processor_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def git_commit(start: Path | None = None) -> str | None:
    """The commit HEAD points at in the checkout holding this package, or None outside a checkout."""
    folder = Path(start or Path(__file__).resolve().parent)
    for candidate in (folder, *folder.parents):
        git = candidate / ".git"
        if git.is_dir():
            return _resolve_head(git)
    return None


def _resolve_head(git: Path) -> str | None:
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[5:]
        loose = git / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        return None
    return None


def environment(device: torch.device, dataset_name: str, fingerprint: str, seed: int, precision: str = "fp32") -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": describe_device(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "dataset": dataset_name,
        "dataset_fingerprint": fingerprint,
        "seed": seed,
        "precision": precision,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
