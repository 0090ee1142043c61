"""Hand-made stored outputs and run directories shared by the sweep and eval tests (helpers only, no tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from repro import rundir
from repro.sweep import SplitOutputs


def random_split(num_exits: int, n: int, num_classes: int, seed: int, gates: bool = True) -> SplitOutputs:
    """Logits whose confidence and correctness both grow with depth, like a trained multi-exit network."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (n,), generator=generator)
    logits = torch.randn(num_exits, n, num_classes, generator=generator)
    for b in range(num_exits):
        # Deeper exits get a larger push towards the target and a larger scale (more confident).
        push = 0.6 * b * torch.rand(n, generator=generator)
        logits[b, torch.arange(n), targets] += push
        logits[b] *= 0.5 + b * 0.7 * torch.rand(n, 1, generator=generator)
    gate_values = torch.rand(num_exits - 1, n, generator=generator) if gates else None
    return SplitOutputs(logits, gate_values, targets)


def make_run(path: Path, splits: dict[str, SplitOutputs], exit_macs, plain_macs: float, method: str = "proposed") -> rundir.RunDir:
    """A run directory with config.json, a stand-in checkpoint.pt, outputs.pt and eval.json that agree."""
    run = rundir.RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run.file(rundir.CONFIG), {"model": "vgg13", "method": method, "dataset": "synthetic", "seed": 0})
    rundir.save_torch(run.file(rundir.CHECKPOINT), {"model": {"weight": torch.arange(4.0)}, "epoch": 1})
    sha = rundir.file_sha256(run.file(rundir.CHECKPOINT))
    outputs = {
        "exit_macs": torch.as_tensor(exit_macs, dtype=torch.float32),
        "checkpoint_sha256": sha,
        "splits": {name: {"logits": s.logits, "gates": s.gates, "targets": s.targets} for name, s in splits.items()},
    }
    rundir.save_torch(run.file(rundir.OUTPUTS), outputs)
    rundir.write_json(run.file(rundir.EVAL), {"checkpoint_sha256": sha, "plain_macs": plain_macs})
    return run


def read_sweep_csv(run: rundir.RunDir) -> list[dict]:
    rows = rundir.read_csv(run.file(rundir.SWEEP))
    for row in rows:
        row["exit_fractions"] = json.loads(row["exit_fractions"])
    return rows
