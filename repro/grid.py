"""Grids: a whole reproduction (models x datasets x methods x seeds x any training option) as one file.

A grid file is TOML. Its keys are TrainConfig field names everywhere (repro.config), so a grid cell
resolves to exactly the TrainConfig that `repro train` builds from the same options, validated in the same
place:

    name = "example"                       # names the output folder: runs/grid/<name>/ unless `output` says
    description = "what it is for"
    output = "runs/grid/example"           # optional; cell run directories go below it
    report = true                          # render the report into <output>/report at the end

    [options]                              # shared by every cell (any TrainConfig field)
    recipe = "report"
    dataset = "cifar10-jpeg"

    [axes]                                 # lists: the cells are their cartesian product
    model = ["vgg13"]
    method = ["baseline", "bnet", "proposed"]
    seed = [0, 1, 2]

    [[blocks]]                             # optional further products, each with its own axes and options
    name = "full-width"                    # optional: its cells are named full-width-<its own varying axes>
    options = { width = 1.0, epochs = 30 }
    axes = { method = ["baseline", "bnet"] }

    [steps]                                # what runs after training
    eval = true
    timing = false                         # `repro eval --timing`, one cell at a time after all training
    timing_images = 1000
    sweep = { max_drop = 1.0 }             # `repro sweep --max-drop 1`; {} = sweep without calibration;
                                           # false = no sweep; or { budget = 0.5 }
    fit_gates = false                      # `repro fit-gates` after the sweep (both policies, lambda 0.1,
                                           # seed 0): criteria fitted-gate and fitted-features

Cell names come from the values of the options that vary across the grid, in a fixed order (model, method,
dataset, then other options, seed last): `vgg13-bnet-cifar10-jpeg-seed0`, plus `cost_weight0.1` when that
axis exists; a block with a `name` names its cells by it and its own axes only (a study of settings that
differ in many options reads better as `gate-closed-seed0` than as every option spelled out). Presets ship
inside the package (repro/grids/*.toml).
"""

from __future__ import annotations

import fnmatch
import itertools
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from repro.config import TrainConfig, check_value, option_names, recipe_default
from repro.errors import ReproError

PRESETS = "repro.grids"
# Axis order in cell names: the three that every reproduction varies first, seed last.
NAME_ORDER = ("model", "method", "dataset")
TOP_LEVEL_KEYS = {"name", "description", "output", "report", "options", "axes", "blocks", "steps", "slurm"}
STEP_KEYS = {"eval", "timing", "timing_images", "sweep", "fit_gates"}
SLURM_KEYS = {"partition", "gpus_per_job", "cpus_per_job", "time", "mem"}


@dataclass(frozen=True)
class Steps:
    """What runs after a cell's training."""

    eval: bool = True
    timing: bool = False
    timing_images: int = 1000
    sweep: dict | None = field(default_factory=lambda: {"max_drop": 1.0})  # calibration target; {} = sweep only; None = no sweep
    fit_gates: bool = False  # exit policies fitted on held-out validation (repro fit-gates), swept as criteria


@dataclass(frozen=True)
class Cell:
    name: str  # its run directory's name
    options: dict  # TrainConfig options (shared, then its block's, then its axis values)
    config: TrainConfig  # resolved exactly as `repro train` would
    path: Path  # its run directory


@dataclass
class Grid:
    name: str
    description: str
    source: str  # the file or preset it came from
    output: Path
    report: bool
    steps: Steps
    cells: list[Cell]
    slurm: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESETS).iterdir() if p.name.endswith(".toml"))


def read_grid_text(source: str) -> tuple[str, str]:
    """(text, label) of a grid file or a shipped preset's name."""
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ReproError(f"grid file {path} not found; give a TOML file or a preset ({', '.join(list_presets())})")
        return path.read_text(encoding="utf-8"), str(path)
    if source in list_presets():
        return resources.files(PRESETS).joinpath(f"{source}.toml").read_text(encoding="utf-8"), f"preset {source}"
    raise ReproError(f"unknown grid {source!r}: not a file, and not a preset ({', '.join(list_presets())}); "
                     "`repro grid --list` describes the presets", exit_code=2)


def load_grid(source: str, overrides: dict | None = None) -> Grid:
    """Read a grid file or preset and expand it into cells; `overrides` replace shared options (--set)."""
    text, label = read_grid_text(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ReproError(f"{label} is not valid TOML: {error}") from None
    return parse_grid(data, label, overrides or {})


def parse_grid(data: dict, label: str, overrides: dict) -> Grid:
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise ReproError(f"{label}: unknown key(s) {', '.join(unknown)}; a grid has {', '.join(sorted(TOP_LEVEL_KEYS))}")
    name = data.get("name") or Path(label).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ReproError(f"{label}: name must be letters, digits, - and _, got {name!r}")
    for key, kind in (("description", str), ("output", str), ("report", bool)):
        if key in data and not isinstance(data[key], kind):
            raise ReproError(f"{label}: {key} must be {'text' if kind is str else 'true or false'}, got {data[key]!r}")
    shared = {**_options(data.get("options", {}), f"{label} [options]"), **_options(overrides, "--set")}
    blocks = []
    if "axes" in data:
        blocks.append((None, {}, _axes(data["axes"], f"{label} [axes]")))
    for index, block in enumerate(data.get("blocks", [])):
        where = f"{label} [[blocks]] #{index + 1}"
        if not isinstance(block, dict) or set(block) - {"name", "options", "axes"}:
            raise ReproError(f"{where}: a block holds `name`, `options` and `axes` only")
        block_name = block.get("name")
        if block_name is not None and (not isinstance(block_name, str) or not block_name.replace("-", "").replace("_", "").isalnum()):
            raise ReproError(f"{where}: name must be letters, digits, - and _, got {block_name!r}")
        blocks.append((block_name, _options(block.get("options", {}), where), _axes(block.get("axes", {}), where)))
    if not blocks:
        raise ReproError(f"{label} has no [axes] and no [[blocks]]: nothing to run")
    # --set changes a shared option; one that a block or an axis sets would be silently overridden there.
    for key in overrides:
        if any(key in options or key in axes for _, options, axes in blocks):
            raise ReproError(f"--set {key}: the grid sets {key} in a block or an axis, which would override it; "
                             "edit the grid file instead", exit_code=2)
    output = Path(data.get("output") or Path("runs") / "grid" / name)
    cells = expand(blocks, shared, output, label)
    return Grid(name, str(data.get("description", "")), label, output, bool(data.get("report", True)),
                _steps(data.get("steps", {}), label), cells, _slurm(data.get("slurm", {}), label))


def _options(values, where: str) -> dict:
    if not isinstance(values, dict):
        raise ReproError(f"{where} must be a table of option = value")
    for key, value in values.items():
        _check_option(key, value, where, "option")
    return dict(values)


def _axes(values, where: str) -> dict:
    if not isinstance(values, dict):
        raise ReproError(f"{where} must be a table of option = [values]")
    for key, items in values.items():
        if not isinstance(items, list):
            raise ReproError(f"{where}: axis {key} must be a list of values, e.g. {key} = [{items!r}]")
        if not items:
            raise ReproError(f"{where}: axis {key} is empty; give at least one value")
        for item in items:
            _check_option(key, item, where, "axis")
    return dict(values)


def _check_option(key: str, value, where: str, what: str) -> None:
    """A TrainConfig option name with a value of its type, or one line naming where the grid says otherwise."""
    valid = option_names()
    if key not in valid:
        raise ReproError(f"{where}: unknown {what} {key!r}; valid: {', '.join(valid)}", exit_code=2)
    try:
        check_value(key, value)
    except ReproError as error:
        raise ReproError(f"{where}: {what} {key}: {error}" if what == "axis" else f"{where}: {error}") from None


def _steps(values, label: str) -> Steps:
    if not isinstance(values, dict) or set(values) - STEP_KEYS:
        raise ReproError(f"{label} [steps]: keys are {', '.join(sorted(STEP_KEYS))}")
    for key in ("eval", "timing", "fit_gates"):
        if key in values and not isinstance(values[key], bool):
            raise ReproError(f"{label} [steps]: {key} must be true or false, got {values[key]!r}")
    sweep = values.get("sweep", {"max_drop": 1.0})
    if sweep is False:
        sweep = None
    if sweep is not None:
        from repro.sweep import check_target

        if (not isinstance(sweep, dict) or len(sweep) > 1 or set(sweep) - {"max_drop", "budget"}
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sweep.values())):
            raise ReproError(f"{label} [steps]: sweep is {{ max_drop = D }}, {{ budget = F }} (numbers), {{}} (no calibration) or false")
        sweep = check_target(sweep.get("max_drop"), sweep.get("budget")) or {}
    timing_images = values.get("timing_images", 1000)
    if isinstance(timing_images, bool) or not isinstance(timing_images, int) or timing_images < 1:
        raise ReproError(f"{label} [steps]: timing_images must be a positive integer, got {timing_images!r}")
    steps = Steps(bool(values.get("eval", True)), bool(values.get("timing", False)), timing_images, sweep,
                  bool(values.get("fit_gates", False)))
    if (steps.timing or steps.sweep is not None) and not steps.eval:
        raise ReproError(f"{label} [steps]: timing and sweep need eval = true (they read its outputs)")
    if steps.fit_gates and steps.sweep is None:
        raise ReproError(f"{label} [steps]: fit_gates needs a sweep (its policies are swept as criteria)")
    return steps


def _slurm(values, label: str) -> dict:
    if not isinstance(values, dict) or set(values) - SLURM_KEYS:
        raise ReproError(f"{label} [slurm]: keys are {', '.join(sorted(SLURM_KEYS))}")
    kinds = {"partition": str, "gpus_per_job": int, "cpus_per_job": int, "time": int, "mem": (int, float)}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, kinds[key]):
            raise ReproError(f"{label} [slurm]: {key} must be {'text' if key == 'partition' else 'a number'}, got {value!r}"
                             + (" (minutes)" if key == "time" else " (GB)" if key == "mem" else ""))
    return dict(values)


# ---------------------------------------------------------------------------------------------- cells


def expand(blocks: list[tuple[str | None, dict, dict]], shared: dict, output: Path, label: str) -> list[Cell]:
    """Every block's cartesian product, each cell resolved to its TrainConfig and named by the options
    that vary across the whole grid, as set (an option left at its recipe's value and the same value given
    explicitly are one cell, not two), or by its block's name and its block's own varying axes."""
    resolved = []
    for block_name, block_options, axes in blocks:
        keys = list(axes)
        own = [key for key in (*NAME_ORDER, *sorted(set(keys) - set(NAME_ORDER) - {"seed"}), "seed")
               if key in keys and len(axes[key]) > 1]
        for values in itertools.product(*(axes[k] for k in keys)):
            options = {**shared, **block_options, **dict(zip(keys, values))}
            recipe = options.get("recipe", "report")
            try:
                config = TrainConfig.from_recipe(recipe, **{k: v for k, v in options.items() if k != "recipe"})
            except ReproError as error:
                described = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
                raise ReproError(f"{label}: the cell with {described}: {error}", error.exit_code) from None
            resolved.append((options, config, block_name, own))
    def given(options: dict, key: str):
        """An option as the cell sets it: its value, or the recipe's (so unset and the default are one)."""
        return options[key] if key in options else recipe_default(key, options.get("recipe", "report"))

    unnamed = [item for item in resolved if item[2] is None]
    varying = [key for key in option_names() if len({repr(given(o, key)) for o, *_ in unnamed}) > 1]
    ordered = [k for k in NAME_ORDER if k in varying] + [k for k in varying if k not in NAME_ORDER and k != "seed"]
    if "seed" in varying:
        ordered.append("seed")
    if not ordered:  # a grid of one cell: named like `repro train` names a run
        ordered = [*NAME_ORDER, "seed"]
    cells, seen = [], {}
    for options, config, block_name, own in resolved:
        if block_name is None:
            name = cell_name({key: given(options, key) for key in ordered}, ordered)
        else:
            name = "-".join([block_name, cell_name(options, own)]) if own else block_name
        if name in seen:
            why = "the same options twice" if seen[name] == config else "their options differ only in ways the name cannot show"
            raise ReproError(f"{label}: two cells would share the run directory {name} ({why}); drop or rename one of them")
        seen[name] = config
        cells.append(Cell(name, options, config, output / name))
    return cells


def cell_name(options: dict, keys: list[str]) -> str:
    """vgg13-bnet-cifar10-jpeg-cost_weight0.1-seed0: values of the varying axes, named where not obvious."""
    parts = []
    for key in keys:
        value = options.get(key)
        text = _value_text(value)
        parts.append(text if key in NAME_ORDER else f"{key}{text}")
    return "-".join(parts)


def _value_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "_".join(_value_text(v) for v in value) or "none"
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def select(cells: list[Cell], pattern: str | None) -> list[Cell]:
    """The cells whose names match the glob `pattern` (all when None); none matching is an error."""
    if pattern is None:
        return cells
    chosen = [cell for cell in cells if fnmatch.fnmatchcase(cell.name, pattern)]
    if not chosen:
        names = ", ".join(cell.name for cell in cells[:5]) + (", ..." if len(cells) > 5 else "")
        raise ReproError(f"--only {pattern!r} matches no cell; cells are named like {names}")
    return chosen
