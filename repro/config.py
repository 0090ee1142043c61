"""The training configuration: one typed dataclass, two recipes, validation in one place.

`TrainConfig` is the single source of truth for every training option (STYLE.md, principle 3): each field
carries its help text and its help panel (`option(...)`), from which `repro train`'s options, the keys of
a grid file and `--set key=value` are all derived; defaults shown in help come from `RECIPES`, never
restated. The trainer saves the resolved config as the run's config.json and `repro.rebuild` rebuilds the
model from it. A config is made from a recipe plus overrides (`TrainConfig.from_recipe`): recipe values
replace the field defaults, then every option the user gave replaces the recipe's.

Recipes:
- `report` (default): the reproduction report's setup. Adam, lr 5e-4, batch 128, up to 30 epochs with
  early stopping on validation loss (patience 5, best weights restored), no batch norm, no augmentation,
  VGG classifier 512-4096-4096-C with dropout.
- `modern`: the strongest 30-epoch schedule we can justify for VGG-13 on CIFAR-sized images, following the
  standard CIFAR recipe for VGG with batch norm (SGD, Nesterov momentum 0.9, weight decay 5e-4, random
  crop with 4-pixel padding + horizontal flip): batch 256, peak lr 0.1 reached by a 2-epoch linear warm-up,
  then linear decay to zero. Linear decay did best among the schedules compared under a fixed, short
  budget by Li, Yumer & Ramanan ("Budgeted training", ICLR 2020); warm-up keeps the first steps of an
  SGD run with several summed exit losses stable. The classifier is 512->C, as in the common CIFAR
  VGG implementations with batch norm; it drops the 19M parameters of the two 4096-wide layers. No
  early stopping: the schedule is meant to run to its end, and the last epoch's weights are kept. No
  label smoothing: it has been found to degrade failure prediction / selective classification (Zhu et
  al., ECCV 2022; Xia et al., 2024), i.e. exactly the confidence ranking that decides early exits;
  `--label-smoothing` turns it on. 10% of the training images are held out for validation (threshold
  calibration needs them), instead of the report's 20%. None of this was tuned here (no GPU was
  available while it was written): it is the standard recipe, not a measured optimum.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field

from repro.errors import ReproError, check_name
from repro.parsing import number_list

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "warmup-linear", "warmup-cosine")
PRECISIONS = ("auto", "fp32", "bf16")

# Help panels of `repro train --help`, in display order.
MODEL, DATA, METHOD, OPTIMISATION, RUN = "Model", "Data", "Method", "Optimisation", "Run"
PANELS = (MODEL, DATA, METHOD, OPTIMISATION, RUN)


def option(default, help: str, panel: str | None, *, choices: str | tuple | None = None, flags: str | None = None,
           default_text: str | None = None):
    """A TrainConfig field that is also a `repro train` option, a grid key and a `--set` key.

    help: one line, no default in it (the default is shown from the field and RECIPES). panel: the help
    panel, or None for fields filled from the data set. choices: the valid values (a tuple, or the name of
    a registry: "models", "methods", "datasets", "classifiers", "heads", "mixes", "stop_on", resolved when
    asked).
    flags: the switch pair of a boolean option when not `--name/--no-name`. default_text: what the
    default means when the value None stands for "decided elsewhere" (the model's or the method's default).
    """
    return field(default=default, metadata={"help": help, "panel": panel, "choices": choices, "flags": flags,
                                            "default_text": default_text})


@dataclass
class TrainConfig:
    # what to train
    model: str = option("vgg13", "Network", MODEL, choices="models")
    method: str = option("proposed", "Training method, a loss (README: Methods)", METHOD, choices="methods")
    dataset: str = option("synthetic", "Data set (repro data list)", DATA, choices="datasets")
    data_dir: str | None = option(None, "Folder holding the data sets", DATA, default_text="./data or $REPRO_DATA")
    subset: int | None = option(None, "Train on N class-balanced images (N // 5 test)", DATA, default_text="all")
    val_fraction: float = option(0.2, "Share of training images held out to validate", DATA)
    split_seed: int = option(0, "Seed of the validation split and the subset", DATA)
    recipe: str = option("report", "Where defaults come from: the USI report, or modern", OPTIMISATION, choices="recipes")
    seed: int = option(0, "Seed of weights, batch order, augmentation", RUN)
    # auto resolves when training starts (bf16 autocast on CUDA and on CPUs with native bf16 instructions,
    # else fp32); config.json holds the precision used, so resuming and skipping compare like with like.
    precision: str = option("auto", "Training arithmetic; auto = bf16 where native", RUN, choices=PRECISIONS)
    # optimisation
    epochs: int = option(30, "Maximum passes over the training split", OPTIMISATION)
    batch_size: int = option(128, "Images per optimizer step", OPTIMISATION)
    optimizer: str = option("adam", "Optimizer", OPTIMISATION, choices=OPTIMIZERS)
    lr: float = option(5e-4, "Peak learning rate", OPTIMISATION)
    momentum: float = option(0.9, "SGD momentum", OPTIMISATION)
    nesterov: bool = option(False, "SGD Nesterov momentum", OPTIMISATION)
    weight_decay: float = option(0.0, "L2 coefficient", OPTIMISATION)
    schedule: str = option("constant", "Learning-rate schedule, per step", OPTIMISATION, choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "Epochs of linear learning-rate warm-up", OPTIMISATION)
    label_smoothing: float = option(0.0, "Label smoothing of every cross-entropy", OPTIMISATION)
    patience: int = option(5, "Early-stopping patience in epochs; 0 = off", OPTIMISATION)
    select_best: bool = option(True, "checkpoint.pt: lowest val loss, or last epoch", OPTIMISATION,
                               flags="--select-best/--select-last")
    augment: bool = option(False, "Random crop and flip of training images", OPTIMISATION)
    # model
    exits: list[int] | None = option(None, "Exit positions, e.g. 0,2,4 (after stage p)", MODEL,
                                     default_text="model's; none for baseline")
    batch_norm: bool | None = option(None, "Batch norm after each convolution", MODEL,
                                     default_text="model's")
    classifier: str | None = option(None, "Final classifier: report = 512-4096-4096-C", MODEL,
                                    choices="classifiers", default_text="model's")
    dropout: bool | None = option(None, "Dropout in the report classifier", MODEL,
                                  default_text="model's")
    head: str = option("conv", "Exit branch: conv (the report's) or pool", MODEL,
                       choices="heads")
    width: float = option(1.0, "Channel multiplier; 0.25 for quick runs", MODEL)
    # method options (None where the method does not use them; `resolved` fills the method's default)
    cost_weight: float | None = option(None, "proposed: lambda of the expected cost", METHOD,
                                       default_text="proposed 0.1")
    joint_weight: float | None = option(None, "Soft-output: weight of sum_b CE(f_b)", METHOD,
                                        default_text="1; 0 = the paper's literal loss")
    mix: str | None = option(None, "Soft-output: mix probabilities or logits", METHOD, choices="mixes",
                             default_text="probs")
    alphas: list[float] | None = option(None, "bnet: CE weight per exit, e.g. 1,1,0.5", METHOD,
                                        default_text="all 1")
    detach_confidence: bool | None = option(None, "report-*: detach the confidence gates", METHOD,
                                            default_text="off")
    gate_bias: float | None = option(None, "proposed: initial gate bias; -3 = closed", METHOD,
                                     default_text="0")
    gate_detach: bool | None = option(None, "proposed: gates read detached features", METHOD,
                                      default_text="off")
    joint_warmup: int | None = option(None, "Soft-output: epochs of per-exit CE first", METHOD,
                                      default_text="0")
    final_weight: float | None = option(None, "Soft-output: weight of the final exit's CE", METHOD,
                                        default_text="0")
    stop_on: str | None = option(None, "Soft-output: what early stopping watches: the loss "
                                 "(the report's rule; mostly the per-exit CEs, so it picks the epoch for the exits) "
                                 "or the objective, NLL(f~_1) + lambda x cost alone (for the exit decision)", METHOD,
                                 choices="stop_on", default_text="loss")
    # filled from the data set
    num_classes: int | None = option(None, "classes of the data set", None)
    in_channels: int | None = option(None, "image channels of the data set", None)
    image_size: int | None = option(None, "image side in pixels", None)

    # -------------------------------------------------------------------------------------- building

    @classmethod
    def from_recipe(cls, recipe: str = "report", **overrides) -> "TrainConfig":
        """Field defaults, then the recipe's values, then every override that is not None; validated."""
        check_name("recipe", recipe, RECIPES)
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ReproError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(option_names())}")
        given = {k: check_value(k, v) for k, v in overrides.items() if v is not None}
        _check_method_options(given.get("method", cls.method), given)
        values = {**RECIPES[recipe], **given, "recipe": recipe}
        return cls(**values).resolved()

    def resolved(self) -> "TrainConfig":
        """Method options the method uses get its defaults; the ones it does not use become None."""
        from repro.methods import method_defaults, method_option_names
        from repro.models import default_options

        check_name("method", self.method, _registry("methods"))
        takes = method_option_names(self.method)
        defaults = method_defaults(self.method)
        updates = {}
        for name in METHOD_OPTIONS:
            current = getattr(self, name)
            updates[name] = (defaults.get(name) if current is None else current) if name in takes else None
        check_name("model", self.model, _registry("models"))
        for name, default in default_options(self.model).items():
            if name in ("batch_norm", "classifier", "dropout") and getattr(self, name) is None:
                updates[name] = default
        if self.method == "baseline":
            if self.exits:
                raise ReproError("method baseline trains the network without exits; --exits does not apply")
            updates["exits"] = []
        config = dataclasses.replace(self, **updates)
        config.validate()
        return config

    def with_dataset(self, dataset) -> "TrainConfig":
        """The config with num_classes, in_channels and image_size taken from a loaded data set."""
        return dataclasses.replace(
            self, num_classes=int(dataset.num_classes), in_channels=int(dataset.channels), image_size=int(dataset.image_size)
        )

    # -------------------------------------------------------------------------------------- checking

    def validate(self) -> None:
        """Every rule a config must satisfy, in one place; a ReproError naming the first broken one."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                check_value(f.name, value)
            choices = choices_of(f.name)
            if choices is not None and value is not None:
                check_name("exit head" if f.name == "head" else f.name.replace("_", " "), value, choices)
        rules = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
            (self.subset is None or self.subset >= 1, f"--subset must be a positive number of images, got {self.subset}"),
            (self.patience >= 0, f"--patience must be >= 0 (0 = never stop early), got {self.patience}"),
            (0 <= self.warmup_epochs <= self.epochs, f"a warm-up of {self.warmup_epochs} epochs does not fit in {self.epochs} epochs; lower --warmup-epochs"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.width > 0, f"--width must be positive, got {self.width}"),
            (self.cost_weight is None or self.cost_weight >= 0, f"--cost-weight must be >= 0, got {self.cost_weight}"),
            (self.joint_weight is None or self.joint_weight >= 0, f"--joint-weight must be >= 0, got {self.joint_weight}"),
            (self.final_weight is None or self.final_weight >= 0, f"--final-weight must be >= 0, got {self.final_weight}"),
            (self.joint_warmup is None or 0 <= self.joint_warmup <= self.epochs,
             f"--joint-warmup must be between 0 and --epochs ({self.epochs}), got {self.joint_warmup}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.split_seed >= 0, f"--split-seed must be >= 0, got {self.split_seed}"),
        ]
        if self.alphas is not None:
            rules.append((all(a >= 0 for a in self.alphas) and any(a > 0 for a in self.alphas), f"--alphas must be >= 0 and not all 0, got {self.alphas}"))
        if self.exits is not None:
            rules.append((len(set(self.exits)) == len(self.exits), f"--exits has a duplicate position: {self.exits}"))
        if self.method == "baseline":
            rules.append((self.exits == [], "method baseline trains the network without exits; --exits does not apply"))
        for ok, message in rules:
            if not ok:
                raise ReproError(message)

    # -------------------------------------------------------------------------------------- I/O

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data, source: str = "config.json") -> "TrainConfig":
        """A config read from a file: an unknown field or a value of the wrong type is an error naming `source`
        (never silently dropped or coerced); a missing field takes its default (files of older versions)."""
        if not isinstance(data, dict):
            raise ReproError(f"{source} does not hold a JSON object")
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ReproError(f"{source} has unknown field(s) {', '.join(unknown)}; it was written by another version of repro")
        data = _older_defaults(data)
        try:
            config = cls(**{name: check_value(name, value) for name, value in data.items()})
            config.validate()
        except ReproError as error:
            raise ReproError(f"{source}: {error}") from None
        return config

    def differences(self, other: "TrainConfig", ignore: tuple[str, ...] = ()) -> list[str]:
        """'name: mine -> theirs' for every field that differs, but those in `ignore`."""
        return [f"{n}: {getattr(self, n)!r} -> {getattr(other, n)!r}" for n in field_names()
                if n not in ignore and getattr(self, n) != getattr(other, n)]

    def method_options(self) -> dict:
        """Keyword arguments for repro.methods.get_method(self.method, ...): the options this method takes."""
        from repro.methods import method_option_names

        takes = method_option_names(self.method)
        return {name: getattr(self, name) for name in ("label_smoothing", *METHOD_OPTIONS) if name in takes}


def _older_defaults(data: dict) -> dict:
    """A `proposed` run whose config.json leaves an option of the paper's loss unset (None or absent) was
    written before its config recorded the method's defaults, when they were the literal loss's: keep that
    meaning, so resuming or verifying it trains the loss it was trained with, not today's default. A
    soft-output run without stop_on was written before the option, when early stopping watched the loss."""
    from repro.methods import method_option_names

    if data.get("method") in _registry("methods") and "stop_on" in method_option_names(data["method"]):
        data = {**data, "stop_on": data.get("stop_on") or "loss"}  # older runs: before the option, always the loss
    if data.get("method") != "proposed":
        return data
    from repro.methods import LITERAL_LOSS

    return {**data, **{key: value for key, value in LITERAL_LOSS.items() if data.get(key) is None}}


RECIPES: dict[str, dict] = {
    "report": {},  # the field defaults above are the report's setup
    "modern": {
        "epochs": 30,
        "batch_size": 256,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "schedule": "warmup-linear",
        "warmup_epochs": 2.0,
        "label_smoothing": 0.0,
        "patience": 0,
        "select_best": False,
        "augment": True,
        "batch_norm": True,
        "classifier": "linear",
        "val_fraction": 0.1,
    },
}

# The fields that configure a method's loss; a method that does not take one gets None (config.json says so).
METHOD_OPTIONS = ("cost_weight", "joint_weight", "mix", "alphas", "detach_confidence", "gate_bias", "gate_detach",
                  "joint_warmup", "final_weight", "stop_on")


# ---------------------------------------------------------------------------------------------- field metadata


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def option_names() -> list[str]:
    """The fields a user sets (repro train options, grid keys); num_classes & co. come from the data set."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.metadata["panel"] is not None]


def option_field(name: str) -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if name not in fields or fields[name].metadata["panel"] is None:
        from repro.errors import UnknownNameError

        raise UnknownNameError("option", name, option_names())
    return fields[name]


@functools.cache
def value_type(name: str) -> tuple[type, bool]:
    """(type, optional) of field `name`: its annotation without `| None` (int, float, str, bool, list[int],
    list[float]), and whether None is allowed."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    return hint, optional


def choices_of(name: str) -> tuple[str, ...] | None:
    """The valid values of a field with a fixed set of them (registries resolved now), else None."""
    choices = {f.name: f for f in dataclasses.fields(TrainConfig)}[name].metadata["choices"]
    return _registry(choices) if isinstance(choices, str) else choices


def recipe_default(name: str, recipe: str = "report"):
    """The value field `name` takes under `recipe` when the user does not set it."""
    return RECIPES[recipe].get(name, {f.name: f for f in dataclasses.fields(TrainConfig)}[name].default)


def describe_default(name: str, recipe: str | None = None) -> str:
    """The default of option `name` as help shows it: the recipe's value (both recipes' where they differ
    and no recipe is in force), or what None stands for."""
    meta = option_field(name).metadata

    def shown(value) -> str:
        return meta["default_text"] if value is None and meta["default_text"] else format_value(value)

    recipes = [recipe] if recipe in RECIPES else list(RECIPES)
    values = {r: recipe_default(name, r) for r in recipes}
    if len({json.dumps(v) for v in values.values()}) == 1:
        return shown(next(iter(values.values())))
    first, *others = values.items()
    return "; ".join([shown(first[1])] + [f"{r} recipe: {shown(v)}" for r, v in others])


def format_value(value) -> str:
    """A value as a user types it: true/false, comma-separated lists, 'none'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_value(name: str, value):
    """`value` (from a file, a grid or Python) checked against field `name`'s type; ints are accepted for
    floats (and become floats), nothing else is coerced. Returns the value to store."""
    kind, optional = value_type(name)
    flag = "--" + name.replace("_", "-")
    if value is None:
        if not optional:
            raise ReproError(f"{flag} cannot be none")
        return None
    origin = typing.get_origin(kind)
    if origin is list:
        (element,) = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ReproError(f"{flag} must be a list of {element.__name__}s, got {value!r}")
        return [_check_scalar(flag, element, item) for item in value]
    return _check_scalar(flag, kind, value)


def _check_scalar(flag: str, kind: type, value):
    if kind is bool:
        if not isinstance(value, bool):
            raise ReproError(f"{flag} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReproError(f"{flag} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ReproError(f"{flag} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ReproError(f"{flag} must be a string, got {value!r}")
    return value


def parse_value(name: str, text: str):
    """A value typed on a command line (`--exits 0,2`, `--set cost_weight=0.1`) -> the field's type."""
    kind, optional = value_type(name)
    flag = "--" + name.replace("_", "-")
    stripped = text.strip()
    if optional and stripped.lower() in ("none", "null"):
        return None
    if typing.get_origin(kind) is list:
        (element,) = typing.get_args(kind)
        return number_list(stripped, flag, element)
    if kind is bool:
        truth = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if stripped.lower() not in truth:
            raise ReproError(f"{flag} must be true or false, got {text!r}")
        return truth[stripped.lower()]
    if kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            raise ReproError(f"{flag} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    return stripped


def _check_method_options(method: str, given: dict) -> None:
    from repro.methods import method_option_names

    check_name("method", method, _registry("methods"))
    takes = method_option_names(method)
    for name in METHOD_OPTIONS:
        if name in given and name not in takes:
            takers = [m for m in _registry("methods") if name in method_option_names(m)]
            flag = "--" + name.replace("_", "-")
            raise ReproError(f"{flag} does not apply to method {method!r} (it applies to {', '.join(takers)})")


def _registry(name: str) -> tuple[str, ...]:
    """The names a registry holds; imported when asked, so that reading a config does not load torch models."""
    if name == "recipes":
        return tuple(RECIPES)
    if name == "models":
        from repro.models import list_models

        return tuple(list_models())
    if name == "methods":
        from repro.methods import list_methods

        return tuple(list_methods())
    if name == "datasets":
        from repro.data import list_datasets

        return tuple(list_datasets())
    if name == "classifiers":
        from repro.models.layers import CLASSIFIERS

        return CLASSIFIERS
    if name == "heads":
        from repro.models.exits import HEADS

        return HEADS
    if name == "mixes":
        from repro.methods import MIXES

        return MIXES
    if name == "stop_on":
        from repro.methods import STOP_ON

        return STOP_ON
    raise KeyError(name)
