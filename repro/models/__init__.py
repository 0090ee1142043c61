"""The model registry: `list_models()` and `create_model(name, ...)` for every multi-exit network.

Each family module (vgg.py, alexnet.py, resnet.py) provides `build_stages`, `build_classifier`,
`DEFAULTS` (its option defaults) and `DEFAULT_EXITS` (its documented exit placement); exits.py wraps
them into one `MultiExitNetwork` with the same forward contract for all (Scardapane et al., ICASSP 2020).
"""

from __future__ import annotations

from numbers import Real

from repro.errors import ReproError, UnknownNameError, check_name
from repro.models import alexnet, resnet, vgg
from repro.models.costs import ExitCosts
from repro.models.exits import (
    BRANCH_CHANNELS,
    HEADS,
    ExitBranch,
    MultiExitNetwork,
    MultiExitOutput,
    check_exit_positions,
    stage_output_shapes,
)
from repro.models.layers import CLASSIFIERS, scaled

_FAMILIES = {"vgg13": vgg, "alexnet": alexnet, "resnet18": resnet}
OPTIONS = ("batch_norm", "classifier", "dropout", "head", "width", "branch_channels")

__all__ = [
    "ExitBranch",
    "ExitCosts",
    "MultiExitNetwork",
    "MultiExitOutput",
    "OPTIONS",
    "create_model",
    "default_options",
    "list_models",
]


def list_models() -> list[str]:
    return sorted(_FAMILIES)


def default_options(name: str) -> dict:
    """The option values `create_model(name, ...)` uses when an option is left at None."""
    family = _FAMILIES[check_name("model", name, list_models())]
    return {**family.DEFAULTS, "head": "conv", "width": 1.0, "branch_channels": BRANCH_CHANNELS}


def default_exits(name: str) -> list[int]:
    """The exit positions `create_model(name, exits=None)` places (the family's documented placement)."""
    return list(_FAMILIES[check_name("model", name, list_models())].DEFAULT_EXITS)


def _check_int(what: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ReproError(f"{what} must be an integer >= {minimum}; got {value!r}")
    return value


def _check_flag(what: str, value) -> None:
    if value is not None and not isinstance(value, bool):
        raise ReproError(f"{what} must be true or false; got {value!r}")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    exits=None,
    *,
    batch_norm: bool | None = None,
    classifier: str | None = None,
    dropout: bool | None = None,
    head: str = "conv",
    width: float = 1.0,
    branch_channels: int | None = None,
    **unknown,
) -> MultiExitNetwork:
    """Build a multi-exit network for square images of `in_channels` x `image_size` x `image_size`.

    exits: None -> the family's documented default placement; [] -> no early exits (the baseline);
        a list of exit positions (position p = after backbone stage p; see each family's docstring).
    batch_norm, classifier ("report" | "linear"), dropout: None -> the family's default (vgg13 and
        alexnet: no batch norm, multi-layer classifier, dropout; resnet18: batch norm, linear classifier).
    head: "conv" (the report's exit branch) or "pool" (global average pool + linear).
    width: channel multiplier for every layer (and hidden units, and branch channels), e.g. 0.25 for
        tiny test models. branch_channels: the conv head's channels (None -> 128 x width).
    Raises ReproError (a ValueError) with one clear line for an unknown name, bad exits or bad options.
    """
    family = _FAMILIES[check_name("model", name, list_models())]
    if unknown:
        raise UnknownNameError("model option", next(iter(unknown)), OPTIONS)
    _check_int("num_classes", num_classes, 2)
    _check_int("in_channels", in_channels, 1)
    _check_int("image_size", image_size, 1)
    if isinstance(width, bool) or not isinstance(width, Real) or not width > 0:
        raise ReproError(f"width must be a positive number (1.0 = the published channel counts); got {width!r}")
    _check_flag("batch_norm", batch_norm)
    _check_flag("dropout", dropout)
    check_name("classifier", classifier if classifier is not None else family.DEFAULTS["classifier"], CLASSIFIERS)
    check_name("exit head", head, HEADS)
    if branch_channels is not None:
        _check_int("branch_channels", branch_channels, 1)

    options = {
        "batch_norm": family.DEFAULTS["batch_norm"] if batch_norm is None else batch_norm,
        "classifier": family.DEFAULTS["classifier"] if classifier is None else classifier,
        "dropout": family.DEFAULTS["dropout"] if dropout is None else dropout,
        "head": head,
        "width": float(width),
        "branch_channels": scaled(BRANCH_CHANNELS, width) if branch_channels is None else branch_channels,
    }
    input_shape = (in_channels, image_size, image_size)
    stages = family.build_stages(in_channels, width=options["width"], batch_norm=options["batch_norm"])
    positions = check_exit_positions(name, exits, len(stages) - 1, family.DEFAULT_EXITS)
    shapes = stage_output_shapes(stages, input_shape)
    final = family.build_classifier(
        shapes[-1], num_classes, width=options["width"], kind=options["classifier"], dropout=options["dropout"]
    )
    return MultiExitNetwork(
        name,
        stages,
        final,
        positions,
        num_classes,
        input_shape,
        shapes,
        head=head,
        branch_channels=options["branch_channels"],
        options=options,
    )
