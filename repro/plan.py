"""Which run directories a `repro train` call trains into: one per seed, each with its resolved config.

Planned before anything is trained, so that a bad option or an existing run directory is refused with one
line before the first epoch (never after the first seed's run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repro.config import TrainConfig
from repro.errors import ReproError

RUNS_ROOT = Path("runs")  # where runs go unless --run-dir says otherwise


@dataclass(frozen=True)
class PlannedRun:
    config: TrainConfig
    path: Path


def default_run_name(config: TrainConfig) -> str:
    return f"{config.model}-{config.method}-{config.dataset}-seed{config.seed}"


def plan_runs(options: dict, recipe: str | None = None, seeds: list[int] | None = None, name: str | None = None,
              run_dir: Path | None = None, overwrite: bool = False) -> list[PlannedRun]:
    """One PlannedRun per seed: `options` (TrainConfig fields, None = not given) under `recipe`, into
    run_dir, runs/NAME or runs/<model>-<method>-<dataset>-seed<seed> (with -seed<seed> appended to the first
    two when there are several seeds). An existing non-empty run directory is refused unless `overwrite`."""
    if options.get("seed") is not None and seeds is not None:
        raise ReproError("give --seed or --seeds, not both")
    if seeds is not None and not seeds:
        raise ReproError("--seeds needs at least one seed, e.g. 0,1,2")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ReproError(f"--seeds has a repeated seed: {','.join(map(str, seeds))}")
    if name is not None and run_dir is not None:
        raise ReproError("give --name or --run-dir, not both")
    seed_list = seeds if seeds is not None else [options.get("seed") or 0]
    several = len(seed_list) > 1
    planned = []
    for seed in seed_list:
        config = TrainConfig.from_recipe(recipe or "report", **{**options, "seed": seed})
        if run_dir is not None:
            path = Path(f"{run_dir}-seed{seed}") if several else Path(run_dir)
        elif name is not None:
            path = RUNS_ROOT / (f"{name}-seed{seed}" if several else name)
        else:
            path = RUNS_ROOT / default_run_name(config)
        planned.append(PlannedRun(config, path))
    for run in planned:
        if run.path.is_dir() and any(run.path.iterdir()) and not overwrite:
            raise ReproError(f"run directory {run.path} already exists; pass --overwrite to replace it or "
                             f"--resume {run.path} to continue it")
    return planned
