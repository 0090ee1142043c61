"""Collect run directories into groups of seeds and aggregate them (mean ± std with n).

A group is every run whose config.json agrees on every key except the seed and the bookkeeping keys
in `NOT_GROUPED` (run directory, name, device): runs that differ in anything else (learning rate, epochs,
subset, width, data source, ...) are never averaged together; they become separate rows, told apart by
the keys in which they differ (`Group.variant`); a row whose network size or training setup departs from
the rest of its table is named by that too (a full-width baseline beside half-width networks). Standard
deviations are sample standard deviations (ddof = 1) over seeds, so a group of one run has a mean and no
spread.

Everything is read through repro.artifacts, which validates each file. A missing, damaged or stale file
never stops the report: it becomes a `Missing` item carrying the command that would produce it, and the
cells that need it stay empty.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from repro import artifacts, rundir
from repro.errors import ReproError, error_reason
from repro.config import recipe_default
from repro.methods import LITERAL_LOSS, is_literal_loss
from repro.models import default_exits, list_models

# Config keys that name or place a run rather than define the experiment; with `seed` they are ignored when grouping.
NOT_GROUPED = ("seed", "run_dir", "name", "device")
# Display order of our methods (the report's rows follow the same order); unknown methods sort after, by name.
METHOD_ORDER = ("baseline", "bnet", "proposed", "report-proposed", "report-maxprob")
DATASET_ORDER = ("cifar10", "cifar10-jpeg", "cifar100", "cinic10", "fashion-mnist", "synthetic", "imagefolder")
DATASET_LABELS = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "cinic10": "CINIC-10",
    "fashion-mnist": "Fashion-MNIST",
    "synthetic": "synthetic",
}
MODEL_LABELS = {"vgg13": "VGG-13", "alexnet": "AlexNet", "resnet18": "ResNet-18"}
# The CIFAR-10 JPEG copy (../shared/data/README.md): JPEG re-encodings of the official images, ~30 dB PSNR.
JPEG_COPY_NAMES = ("cifar10-jpeg", "cifar10-jpeg.tar.gz")
JPEG_COPY_LABEL = "CIFAR-10 (JPEG copy)"
JPEG_COPY_NOTE = (
    "CIFAR-10 (JPEG copy) is the official CIFAR-10 split re-encoded as JPEG (about 30 dB PSNR): its accuracies are "
    "close to, but not, CIFAR-10 accuracies. They are shown beside the CIFAR-10 reference numbers for orientation only, "
    "always under this label, and the difference includes the JPEG loss."
)


@dataclass(frozen=True)
class Missing:
    """Something a run lacks (or could not be read), and the command that produces it."""

    run: str  # the run directory as given
    what: str  # the file, e.g. "timing.json"
    why: str  # one line: "not measured yet", "is not valid JSON", ...
    command: str  # shell command that produces it


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (ddof = 1; NaN for one value) and count of one quantity over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values) -> "Stat | None":
        values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not values:
            return None
        series = pd.Series(values, dtype="float64")
        return cls(float(series.mean()), float(series.std(ddof=1)) if len(values) > 1 else math.nan, len(values))

    def scaled(self, factor: float) -> "Stat":
        return Stat(self.mean * factor, self.std * factor, self.n)


@dataclass
class DatasetInfo:
    name: str  # config's dataset
    label: str  # shown in the report
    reference: str | None  # the dataset whose reference numbers apply (None: none do)
    note: str = ""  # shown under the tables when set


def describe_dataset(config: dict) -> DatasetInfo:
    """How a run's dataset is labelled and which reference numbers, if any, it is compared with."""
    name = str(config.get("dataset", "?"))
    if name == "cifar10-jpeg":
        return DatasetInfo(name, JPEG_COPY_LABEL, "cifar10", JPEG_COPY_NOTE)
    if name == "imagefolder":
        root = Path(str(config.get("data_dir") or ""))
        if root.name in JPEG_COPY_NAMES:
            return DatasetInfo(name, JPEG_COPY_LABEL, "cifar10", JPEG_COPY_NOTE)
        return DatasetInfo(name, f"imagefolder ({root.name or '?'})", None)
    return DatasetInfo(name, DATASET_LABELS.get(name, name), name if name in ("cifar10", "cifar100", "cinic10") else None)


def fill_commands(run: rundir.RunDir) -> dict[str, str]:
    """The command that produces each file of a run, with the path quoted for a POSIX shell."""
    path = shlex.quote(str(run.path))
    return {
        rundir.CHECKPOINT: f"repro train --resume {path}",
        rundir.METRICS: f"repro train --resume {path}",
        rundir.EVAL: f"repro eval {path}",
        rundir.TIMING: f"repro eval {path} --timing",
        rundir.SWEEP: f"repro sweep {path}",
        rundir.CALIBRATION: f"repro sweep {path} --max-drop 1.0",
    }


WHY_ABSENT = {
    rundir.METRICS: "no finished epoch (training has not run)",
    rundir.EVAL: "not evaluated yet",
    rundir.TIMING: "latency not measured yet",
    rundir.SWEEP: "thresholds not swept yet",
    rundir.CALIBRATION: "no threshold calibrated yet",
}


@dataclass
class RunRecord:
    """Everything the report reads from one run directory (None where a file is absent or unusable)."""

    run: rundir.RunDir
    config: dict
    eval: dict | None = None
    timing: dict | None = None
    calibration: dict | None = None
    sweep: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    state: artifacts.RunState | None = None  # None: state.json unreadable
    missing: list[Missing] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.current_status() == "finished"

    @property
    def state_text(self) -> str:
        """'finished (30 of 30 epochs)', 'interrupted at epoch 3/30', ..."""
        return self.state.describe() if self.state is not None else "state unknown (state.json unreadable)"

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def path(self) -> str:
        return str(self.run.path)

    @property
    def seed(self):
        return self.config.get("seed")

    def group_key(self) -> tuple:
        """Every config key except the seed and bookkeeping, JSON-encoded so lists and None compare exactly."""
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in self.config.items() if k not in NOT_GROUPED))

    @property
    def has_exits(self) -> bool:
        """False for a network without early exits (the baseline), which has nothing to sweep or calibrate."""
        exits = _get(self.eval, "num_exits")
        if isinstance(exits, int):
            return exits > 1
        return self.config.get("method") != "baseline" and self.config.get("exits") != []

    def command(self, what: str) -> str:
        return fill_commands(self.run)[what]


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


SWEEP_FRAME_COLUMNS = ("split", "criterion", "threshold", "accuracy", "mean_macs", "macs_speedup", "exit_fractions", "pareto")


def read_run(run: rundir.RunDir) -> RunRecord:
    """Read one run; a config.json that cannot be read is a ReproError, everything else becomes `missing`."""
    record = RunRecord(run, artifacts.read_config(run).to_dict())
    commands = fill_commands(run)
    try:
        record.state = artifacts.read_state(run)
    except ReproError as error:
        record.missing.append(Missing(str(run.path), rundir.STATE, f"unreadable ({error_reason(error, 200)})", commands[rundir.CHECKPOINT]))

    def load(name: str, reader, recorded=None):
        """reader(run) -> value, or a Missing item: absent, damaged, or from another checkpoint."""
        if not run.has(name):
            record.missing.append(Missing(str(run.path), name, WHY_ABSENT[name], commands[name]))
            return None
        try:
            value = reader(run)
        except artifacts.OutdatedResult:
            record.missing.append(Missing(str(run.path), name, "written by an older repro with another definition", commands[name]))
            return None
        except ReproError as error:
            record.missing.append(Missing(str(run.path), name, f"unreadable ({error_reason(error, 200)})", commands[name]))
            return None
        if recorded is not None:
            reason = artifacts.stale_reason(run, recorded(value))
            if reason:
                record.missing.append(Missing(str(run.path), name, reason, commands[name]))
                return None
        return value

    def sha(value):
        return value.get("checkpoint_sha256")

    record.metrics = load(rundir.METRICS, lambda r: pd.DataFrame(artifacts.read_metrics(r)))
    record.eval = load(rundir.EVAL, lambda r: artifacts.read_eval(r, check_current=False), sha)
    record.timing = load(rundir.TIMING, lambda r: artifacts.read_timing(r, check_current=False), sha)
    if record.has_exits or run.has(rundir.SWEEP):
        record.sweep = load(rundir.SWEEP, lambda r: pd.DataFrame(artifacts.read_sweep(r, check_current=False),
                                                                 columns=list(SWEEP_FRAME_COLUMNS)),
                            lambda _: artifacts.sweep_checkpoint(run))
    if record.has_exits or run.has(rundir.CALIBRATION):
        record.calibration = load(rundir.CALIBRATION, lambda r: artifacts.read_calibration(r, check_current=False), sha)
    return record


# ---------------------------------------------------------------------------------------------- per-run values


def _get(data, *keys):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def run_values(record: RunRecord) -> dict:
    """The scalar quantities of one run that the tables aggregate (accuracies as fractions, latencies in ms)."""
    e, t = record.eval, record.timing
    return {
        "final_accuracy": _get(e, "test", "final_accuracy"),
        "method_accuracy": _get(e, "test", "method_accuracy"),
        "op_accuracy": _get(e, "operating_point", "test", "accuracy"),
        "op_mean_macs": _get(e, "operating_point", "test", "mean_macs"),
        "op_macs_speedup": _get(e, "operating_point", "test", "macs_speedup"),
        # Means over images (each image's median over repeats, repro.timing): the average cost per image,
        # what the MAC speed-up predicts when images take different exits.
        "latency_ms": _get(t, "batch1", "early_exit", "mean_ms"),
        "plain_latency_ms": _get(t, "batch1", "plain", "mean_ms"),
        "full_latency_ms": _get(t, "batch1", "full", "mean_ms"),
        "measured_speedup": _get(t, "measured_speedup", "batch1"),
        "measured_speedup_batched": _get(t, "measured_speedup", "batched"),
        "speedup_spread": _get(t, "measured_speedup", "batch1_spread"),
        "batched_spread": _get(t, "measured_speedup", "batched_spread"),
        "timing_macs_speedup": _get(t, "macs_speedup"),
        "timing_accuracy": _get(t, "early_exit_accuracy"),
        "cal_accuracy": _get(record.calibration, "test", "accuracy"),
        "cal_macs_speedup": _get(record.calibration, "test", "macs_speedup"),
    }


def stack(values) -> np.ndarray | None:
    """Equal-length lists (one per run) -> float array [runs, length]; None when there are none or they disagree."""
    values = [v for v in values if isinstance(v, list) and v]
    if not values or len({len(v) for v in values}) != 1:
        return None
    return np.asarray([[_number(x) for x in v] for v in values], dtype=np.float64)


# ---------------------------------------------------------------------------------------------- groups


@dataclass
class Group:
    """Runs that differ only in their seed. `runs` are the ones whose numbers are reported: the finished
    ones (all of them with include_unfinished); `unfinished` the runs left out, which every table marks."""

    runs: list[RunRecord]
    dataset: DatasetInfo
    variant: str = ""  # the keys in which it differs from its siblings (same model x dataset x method), "" if none
    unfinished: list[RunRecord] = field(default_factory=list)
    placeholder: bool = False  # no run at all: a reference row we have no number for yet

    @property
    def members(self) -> list[RunRecord]:
        return self.runs + self.unfinished

    @property
    def config(self) -> dict:
        return {k: v for k, v in self.members[0].config.items() if k not in NOT_GROUPED} if self.members else self._config

    _config: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe", ""))

    @property
    def model_label(self) -> str:
        return MODEL_LABELS.get(self.model, self.model)

    tag: str = ""  # the short name of `variant` that rows show (`short_tag`); the legend table lists `variant`

    @property
    def label(self) -> str:
        return f"{self.method} · {self.tag}" if self.tag else self.method

    @property
    def literal(self) -> bool:
        """A `proposed` run with the paper's loss alone: probability mixture, no per-exit or final CE, no
        warm-up, gates starting unbiased and reading their features (issue 13's `literal`)."""
        return is_literal_loss(self.method, self.config)

    @property
    def named_label(self) -> str:
        """The label with the paper's literal loss named as such (a literal run's tag already says so)."""
        return self.label if self.literal and self.tag else self.label + (" (the paper's literal loss)" if self.literal else "")

    @property
    def display_label(self) -> str:
        """The label as tables show it: the paper's literal loss named as such, left-out runs counted."""
        label = self.named_label
        if self.unfinished:
            label += " — left out: " + "; ".join(f"{run.name} {run.state_text}" for run in self.unfinished)
        return label

    @property
    def setup(self) -> str:
        """The training settings a reader needs first: recipe (and what overrides it), epochs, subset, width."""
        config = self.config
        overridden = recipe_overrides(config)
        parts = [f"recipe {self.recipe}" + (f" with {', '.join(overridden)} overridden" if overridden else ""),
                 f"{config.get('epochs', '?')} epochs"]
        parts.append(f"subset {config['subset']}" if config.get("subset") else "full training set")
        if config.get("width", 1.0) != 1.0:
            parts.append(f"width {config.get('width')}")
        return ", ".join(parts)

    @property
    def section(self) -> tuple[str, str]:
        """The (model, dataset label) panel this group belongs to."""
        return (self.model, self.dataset.label)

    @property
    def seeds(self) -> list:
        return [run.seed for run in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    def stat(self, quantity: str) -> Stat | None:
        return Stat.of([run_values(run)[quantity] for run in self.runs])

    def runs_lacking(self, quantity: str) -> list[RunRecord]:
        return [run for run in self.runs if run_values(run)[quantity] is None]

    def sort_key(self):
        method_rank = METHOD_ORDER.index(self.method) if self.method in METHOD_ORDER else len(METHOD_ORDER)
        dataset_rank = DATASET_ORDER.index(self.dataset.name) if self.dataset.name in DATASET_ORDER else len(DATASET_ORDER)
        return (self.model, dataset_rank, self.dataset.label, method_rank, self.method, self.variant)


def _format_value(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


# Settings every method of a table shares by construction (the network's size and the training setup, not
# the method's own options): where rows of one table differ in them, a reader comparing two methods needs
# to know, e.g. a full-width baseline beside half-width early-exit networks.
SETUP_KEYS = ("width", "recipe", "epochs", "subset", "head", "batch_norm", "classifier", "augment", "optimizer", "lr",
              "batch_size", "schedule", "weight_decay", "precision")


def _variants(groups: list[Group]) -> None:
    """Name each group by the config keys in which it differs from the others of its model x dataset x method;
    then, within each model x dataset table, by any setup key (`SETUP_KEYS`) in which it departs from the
    value most of the table's groups share (every group, where no value is shared by most)."""
    by_cell: dict[tuple, list[Group]] = {}
    for group in groups:
        by_cell.setdefault((group.model, group.dataset.label, group.method), []).append(group)
    named: dict[int, list[str]] = {id(group): [] for group in groups}
    for siblings in by_cell.values():
        if len(siblings) < 2:
            continue
        keys = sorted({k for g in siblings for k in g.config})
        differing = [k for k in keys if len({json.dumps(g.config.get(k), sort_keys=True) for g in siblings}) > 1]
        for group in siblings:
            named[id(group)] = list(differing)
    by_table: dict[tuple, list[Group]] = {}
    for group in groups:
        by_table.setdefault(group.section, []).append(group)
    for table in by_table.values():
        for key in SETUP_KEYS:
            values = [json.dumps(g.config.get(key), sort_keys=True) for g in table]
            counts = {value: values.count(value) for value in values}
            if len(counts) < 2:
                continue
            most = max(counts.values())
            common = [value for value, count in counts.items() if count == most]
            majority = common[0] if len(common) == 1 and most > len(table) / 2 else None
            for group, value in zip(table, values):
                if value != majority and key not in named[id(group)]:
                    named[id(group)].append(key)
    for group in groups:
        keys = sorted(named[id(group)])
        group.variant = ", ".join(f"{k}={_format_value(group.config.get(k))}" for k in keys)
        group.tag = short_tag(group, keys) if keys else ""


# How a row names an option in which it differs: short words a reader knows from the paper and the CLI;
# every other option is its CLI name and value. The legend table lists the full key=value list once.
_TAG_NAMES = {"cost_weight": "λ", "joint_warmup": "warm-up", "final_weight": "final CE ×", "joint_weight": "joint CE ×"}


def _tag(key: str, value) -> str:
    if key == "joint_weight" and value in (0, 0.0):
        return "no joint CE"
    if isinstance(value, bool):
        return key.replace("_", "-") if value else "no " + key.replace("_", "-")
    if isinstance(value, list):
        return f"{key.replace('_', '-')} {','.join(_format_value(v) for v in value)}"
    name = _TAG_NAMES.get(key, key.replace("_", "-"))
    return f"{name}{'' if name.endswith('×') else ' '}{_format_value(value)}"


def _method_defaults(config: dict) -> dict:
    """The options `repro train` would give this run's model, method, dataset and recipe by default."""
    from repro.config import RECIPES, TrainConfig

    try:
        if config.get("recipe", "report") not in RECIPES:
            return {}
        return TrainConfig.from_recipe(config.get("recipe", "report"), model=config.get("model"), method=config.get("method"),
                                       dataset=config.get("dataset")).to_dict()
    except (ReproError, TypeError, ValueError):
        return {}


def short_tag(group: Group, keys: list[str]) -> str:
    """A row's short name for the options in which it differs (`keys`): the setup keys with their values
    (`width 0.5`, `lr 0.001`), the method's own options only where they depart from its defaults
    (`λ 0.01`, `gate-detach`, `no joint CE`), the paper's literal loss by that name, and `default` where
    nothing departs (the method as `repro train` trains it, beside rows that change it). Where rows differ in
    their recipe, `recipe modern` stands for the settings it implies: only departures from it are named, and
    the default recipe (the report's, what `repro train` uses) is no departure either."""
    from repro.config import RECIPES

    config, defaults = group.config, _method_defaults(group.config)
    own_exits = default_exits(config["model"]) if config.get("model") in list_models() else None
    recipe_keys = set().union(*RECIPES.values())  # the settings a recipe sets (width, epochs, subset: never)
    literal = group.literal
    tags = ["the paper's literal loss"] if literal else []
    for key in keys:
        value = config.get(key)
        if key == "recipe" and value == recipe_default("recipe"):
            continue
        if key == "exits" and (value is None or value == own_exits):  # the model's own placement
            continue
        implied_by_recipe = "recipe" in keys and key in recipe_keys
        if (key not in SETUP_KEYS or implied_by_recipe) and key in defaults and defaults[key] == value:
            continue
        if literal and key in LITERAL_LOSS:
            continue
        tags.append(_tag(key, value))
    return ", ".join(tags) or "default"


def recipe_overrides(config: dict) -> list[str]:
    """The training settings in which a run departs from its recipe (the model's and the method's own
    defaults are not overrides; epochs, subset, width and the data are shown apart)."""
    from repro.config import RECIPES, TrainConfig

    recipe = config.get("recipe", "report")
    if recipe not in RECIPES:
        return []
    try:
        default = TrainConfig.from_recipe(recipe, model=config.get("model"), method=config.get("method"),
                                          dataset=config.get("dataset")).to_dict()
    except ReproError:
        return []
    shown_apart = {"seed", "epochs", "subset", "width", "data_dir", "dataset", "exits", "precision", "num_classes",
                   "in_channels", "image_size", "split_seed"}
    return [key for key, value in config.items()
            if key not in shown_apart and key in default and value is not None and default[key] != value]


@dataclass
class Collection:
    runs: list[RunRecord]
    groups: list[Group]  # sorted by model, dataset, method, variant
    skipped: list[Missing]  # runs whose config.json could not be read
    include_unfinished: bool = False  # unfinished runs' numbers are in the tables

    @property
    def missing(self) -> list[Missing]:
        return self.skipped + [item for run in self.runs for item in run.missing]


def collect(paths, include_unfinished: bool = False) -> Collection:
    """Find the runs under `paths`, read them, and group them by everything but the seed. Unfinished runs
    (interrupted, failed, still running) are kept out of the numbers unless `include_unfinished`."""
    records, skipped = [], []
    for run in rundir.find_runs(paths):
        try:
            records.append(read_run(run))
        except ReproError as error:
            skipped.append(Missing(str(run.path), rundir.CONFIG, f"unreadable ({error})", "repro train (a new run)"))
    by_key: dict[tuple, list[RunRecord]] = {}
    for record in records:
        by_key.setdefault(record.group_key(), []).append(record)
    groups = []
    for runs in by_key.values():
        runs = sorted(runs, key=lambda r: (str(r.seed), r.path))
        left_out = [] if include_unfinished else [run for run in runs if not run.finished]
        groups.append(Group([run for run in runs if run not in left_out], describe_dataset(runs[0].config), unfinished=left_out))
    _variants(groups)
    groups.sort(key=Group.sort_key)
    return Collection(records, groups, skipped, include_unfinished)
