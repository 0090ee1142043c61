"""`repro verify RUN`: can a committed run's numbers be regenerated? Retrain its first epochs and compare.

A run's config.json is enough to rebuild it (repro.rebuild), and training is deterministic on a given
machine (repro.trainer), so retraining the first K epochs from config.json alone must give metrics.csv's
first K rows again: equal to 4 decimals on the same kind of machine (the same CPU instruction set and
precision; bf16 and the thread count change the rounding). Timing columns (seconds, images per second)
measure the machine, not the run, and are left out. The retraining happens in a temporary folder: the
committed run is only read.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from repro import artifacts, rundir
from repro.errors import ReproError

DECIMALS = 4
MACHINE_COLUMNS = ("seconds", "images_per_second")  # how fast, not what: never compared


@dataclass
class ColumnCheck:
    column: str
    largest_difference: float  # over the compared epochs
    equal: bool  # equal when both are rounded to DECIMALS


@dataclass
class Verification:
    run: rundir.RunDir
    epochs: int
    columns: list[ColumnCheck]
    precision: str
    environment: str  # where the run was trained, from env.json
    here: str  # where it was retrained

    @property
    def reproduced(self) -> bool:
        return all(check.equal for check in self.columns)


def verify_run(run: rundir.RunDir, epochs: int = 2, data_dir: str | None = None, device: str = "cpu",
               progress=None) -> Verification:
    """Retrain `run`'s first `epochs` epochs in a temporary folder and compare; `progress` is a
    repro.trainer.Progress (the CLI's bars and one line per epoch), or None."""
    from repro.environment import describe_device
    from repro.trainer import fit, resolve_precision

    if epochs < 1:
        raise ReproError(f"--epochs must be at least 1, got {epochs}")
    config = artifacts.read_config(run)
    committed = artifacts.read_metrics(run)
    if len(committed) < epochs:
        raise ReproError(f"{run.file(rundir.METRICS)} has {len(committed)} epoch(s); cannot compare {epochs}")
    env = artifacts.read_env(run) if run.has(rundir.ENV) else {}
    if data_dir is not None:
        config = replace(config, data_dir=str(data_dir))
    import torch

    here = resolve_precision("auto", torch.device(device))
    if config.precision == "bf16" and here != "bf16":
        raise ReproError(f"run {run.path} trained in bf16 on a device with native bf16; this {device} has none, so its "
                         "rounding would differ: verify it on the same kind of machine")
    with tempfile.TemporaryDirectory(prefix="repro-verify-") as folder:
        result = fit(config, Path(folder) / run.name, device=device, progress=progress, stop_after=epochs)
        fresh = result.rows
    columns = []
    for column in committed[0]:
        if column in MACHINE_COLUMNS or column == "epoch":
            continue
        old = [row.get(column) for row in committed[:epochs]]
        new = [row.get(column) for row in fresh[:epochs]]
        numbers = [(a, b) for a, b in zip(old, new) if isinstance(a, (int, float)) and isinstance(b, (int, float))]
        if not numbers:
            continue
        largest = max(abs(float(a) - float(b)) for a, b in numbers)
        equal = all(round(float(a), DECIMALS) == round(float(b), DECIMALS) or math.isclose(a, b, abs_tol=0.5 * 10**-DECIMALS)
                    for a, b in numbers) and len(numbers) == epochs
        columns.append(ColumnCheck(column, largest, equal))
    return Verification(run, epochs, columns, config.precision, str(env.get("device", "unknown")), describe_device(torch.device(device)))
