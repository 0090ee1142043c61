"""The training configuration: one typed dataclass, two recipes, validation in one place.

A `TrainConfig` holds everything needed to rebuild a run (STYLE.md, principle 3); the trainer saves the
resolved config as the run's config.json and `repro.build` rebuilds the model from it. A config is made
from a recipe plus overrides (`TrainConfig.from_recipe`): recipe values replace the field defaults, then
every option the user gave replaces the recipe's.

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
from dataclasses import dataclass

from repro.errors import ReproError, check_name

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "warmup-linear", "warmup-cosine")
CLASSIFIERS = ("report", "linear")
HEADS = ("conv", "pool")


@dataclass
class TrainConfig:
    # what to train
    model: str = "vgg13"  # repro.models.list_models()
    method: str = "proposed"  # repro.methods.list_methods()
    dataset: str = "synthetic"  # repro.data.list_datasets(); synthetic needs no download
    data_dir: str | None = None  # where datasets live; None = ./data or $REPRO_DATA
    subset: int | None = None  # train on N class-balanced training images (N // 5 test); None = all
    val_fraction: float = 0.2  # fraction of the training images held out for validation
    split_seed: int = 0  # seed of the train/val split and subset, fixed across training seeds
    recipe: str = "report"  # the recipe the defaults came from (RECIPES)
    seed: int = 0  # initialisation, batch order, augmentation and dropout
    # optimisation
    epochs: int = 30  # maximum number of passes over the training split
    batch_size: int = 128  # images per step
    optimizer: str = "adam"  # adam | sgd
    lr: float = 5e-4  # peak learning rate
    momentum: float = 0.9  # SGD momentum (unused by Adam)
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 0.0  # L2 coefficient (coupled, torch's weight_decay)
    schedule: str = "constant"  # constant | warmup-linear (to 0) | warmup-cosine (to 0), stepped per batch
    warmup_epochs: float = 0.0  # epochs of linear warm-up from 0 to lr
    label_smoothing: float = 0.0  # eps of every CE/NLL term
    patience: int = 5  # early stopping: epochs without a lower val loss; 0 = never stop early
    select_best: bool = True  # checkpoint.pt = epoch with the lowest val loss (True) or the last epoch
    augment: bool = False  # random crop (4-pixel padding) + horizontal flip of training images
    # model
    exits: list[int] | None = None  # early-exit positions; None = the model's default; baseline: none
    # None = the model family's default (vgg13/alexnet: no batch norm, the report classifier with dropout;
    # resnet18: batch norm, linear classifier); the resolved config holds the value used.
    batch_norm: bool | None = None
    classifier: str | None = None  # report (vgg13: 512-4096-4096-C) | linear (512-C)
    dropout: bool | None = None  # dropout (p = 0.5) before the hidden layers of the report classifier
    head: str = "conv"  # exit branch: conv (the report's) | pool (cheaper)
    width: float = 1.0  # channel multiplier (tiny models for tests and demos)
    # method options (None where the method does not use them)
    cost_weight: float | None = None  # proposed: lambda, nats of NLL per unit of relative cost
    joint_weight: float | None = None  # soft-output methods: w of w * sum_b CE(f_b)
    mix: str | None = None  # soft-output methods: probs | logits
    alphas: list[float] | None = None  # bnet: CE weight per exit (final included); None = all 1
    detach_confidence: bool | None = None  # report-proposed / report-maxprob: detach the confidence gates
    # filled from the data set
    num_classes: int | None = None
    in_channels: int | None = None
    image_size: int | None = None

    # -------------------------------------------------------------------------------------- building

    @classmethod
    def from_recipe(cls, recipe: str = "report", **overrides) -> "TrainConfig":
        """Field defaults, then the recipe's values, then every override that is not None; validated."""
        check_name("recipe", recipe, RECIPES)
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ReproError(f"unknown config field(s): {', '.join(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        _check_method_options(given.get("method", cls.method), given)
        values = {**RECIPES[recipe], **given, "recipe": recipe}
        return cls(**values).resolved()

    def resolved(self) -> "TrainConfig":
        """Method options the method uses get its defaults; the ones it does not use become None."""
        from repro.methods import DEFAULT_COST_WEIGHT, default_joint_weight, method_option_names

        check_name("method", self.method, _method_names())
        takes = method_option_names(self.method)
        defaults = {
            "cost_weight": DEFAULT_COST_WEIGHT,
            "joint_weight": default_joint_weight(self.method),
            "mix": "probs",
            "alphas": None,
            "detach_confidence": False,
        }
        updates = {}
        for name, default in defaults.items():
            current = getattr(self, name)
            updates[name] = (default if current is None else current) if name in takes else None
        from repro.models import default_options

        check_name("model", self.model, _model_names())
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
        check_name("method", self.method, _method_names())
        check_name("recipe", self.recipe, RECIPES)
        check_name("model", self.model, _model_names())
        check_name("dataset", self.dataset, _dataset_names())
        check_name("optimizer", self.optimizer, OPTIMIZERS)
        check_name("schedule", self.schedule, SCHEDULES)
        if self.classifier is not None:
            check_name("classifier", self.classifier, CLASSIFIERS)
        check_name("head", self.head, HEADS)
        if self.mix is not None:
            check_name("mix", self.mix, ("probs", "logits"))
        rules = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
            (self.subset is None or self.subset >= 1, f"--subset must be a positive number of images, got {self.subset}"),
            (self.patience >= 0, f"--patience must be >= 0 (0 = never stop early), got {self.patience}"),
            (0 <= self.warmup_epochs <= self.epochs, f"a warm-up of {self.warmup_epochs} epochs does not fit in {self.epochs} epochs; lower --warmup-epochs"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.width > 0, f"--width must be positive, got {self.width}"),
            (self.cost_weight is None or self.cost_weight >= 0, f"--cost-weight must be >= 0, got {self.cost_weight}"),
            (self.joint_weight is None or self.joint_weight >= 0, f"--joint-weight must be >= 0, got {self.joint_weight}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
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
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config read from config.json; an unknown field is an error (not silently dropped), a missing one takes its default."""
        if not isinstance(data, dict):
            raise ReproError("config.json does not hold a JSON object")
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ReproError(f"config.json has unknown field(s) {', '.join(unknown)}; it was written by another version of repro")
        config = cls(**data)
        config.validate()
        return config

    def differences(self, other: "TrainConfig", fields: list[str] | None = None) -> list[str]:
        """'name: mine -> theirs' for every field (or every one of `fields`) that differs."""
        names = fields if fields is not None else field_names()
        return [f"{n}: {getattr(self, n)!r} -> {getattr(other, n)!r}" for n in names if getattr(self, n) != getattr(other, n)]

    def method_options(self) -> dict:
        """Keyword arguments for repro.methods.get_method(self.method, ...)."""
        from repro.methods import method_options

        all_options = {
            "label_smoothing": self.label_smoothing,
            "cost_weight": self.cost_weight,
            "joint_weight": self.joint_weight,
            "mix": self.mix,
            "alphas": self.alphas,
            "detach_confidence": self.detach_confidence,
        }
        return method_options(self.method, **all_options)


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

# Method options and the methods that take them, for a clear error when one is given to another method.
METHOD_OPTIONS = ("cost_weight", "joint_weight", "mix", "alphas", "detach_confidence")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _check_method_options(method: str, given: dict) -> None:
    from repro.methods import method_option_names

    check_name("method", method, _method_names())
    takes = method_option_names(method)
    for name in METHOD_OPTIONS:
        if name in given and name not in takes:
            takers = [m for m in _method_names() if name in method_option_names(m)]
            flag = "--" + name.replace("_", "-")
            raise ReproError(f"{flag} does not apply to method {method!r} (it applies to {', '.join(takers)})")


def _method_names() -> list[str]:
    from repro.methods import list_methods

    return list_methods()


def _model_names() -> list[str]:
    from repro.models import list_models

    return list_models()


def _dataset_names() -> list[str]:
    from repro.data import list_datasets

    return list_datasets()
