"""`repro train`'s options, generated from TrainConfig's fields: one place for each option's name, type,
help and default (repro.config).

`with_config_options(command)` adds one Typer option per TrainConfig option to `command`'s own parameters
and hands their values to it as one dict, `options` (None = not given: the recipe's value applies). Help
shows each default as `RECIPES` gives it, both recipes' values where they differ; with `--recipe NAME`
before `--help`, the defaults of that recipe.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Annotated, Optional

import typer

from repro.config import PANELS, TrainConfig, choices_of, describe_default, option_names, parse_value, value_type


def flags_of(name: str) -> list[str]:
    """The command-line spelling of option `name`: --batch-size, and --x/--no-x for switches."""
    meta = _meta(name)
    if meta["flags"]:
        return [meta["flags"]]
    flag = "--" + name.replace("_", "-")
    kind, _ = value_type(name)
    return [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]


def help_text(name: str, recipe: str | None = None) -> str:
    """One line: what the option does, its choices, and its default (the recipe's, where one is in force).
    The bracket is escaped: help is Rich markup, where [default: ...] would read as a style tag."""
    choices = choices_of(name)
    listed = f": {' | '.join(choices)}" if choices else ""
    return f"{_meta(name)['help']}{listed} \\[default: {describe_default(name, recipe)}]"


def _meta(name: str):
    return {f.name: f for f in dataclasses.fields(TrainConfig)}[name].metadata


def _cli_type(name: str):
    kind, _ = value_type(name)
    if typing.get_origin(kind) is list:
        return str  # parsed by repro.config.parse_value: "0,2,4"
    return kind


def _recipe_callback(ctx: typer.Context, value: Optional[str]):
    """Eager: when --recipe comes before --help, help shows that recipe's defaults."""
    if value is not None and not ctx.resilient_parsing:
        for other in ctx.command.params:
            if other.name in option_names() and other.name != "recipe":
                other.help = help_text(other.name, value)
    return value


def config_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per option, grouped by help panel (PANELS order), each `Optional[...] = None`."""
    parameters = []
    for name in sorted(option_names(), key=lambda n: PANELS.index(_meta(n)["panel"])):
        kind = _cli_type(name)
        extra = {"is_eager": True, "callback": _recipe_callback} if name == "recipe" else {}
        # No type column: the help text says what each option takes (its choices, an example list, its
        # default), and at 80 columns the column would take a tenth of the width from the help.
        info = typer.Option(*flags_of(name), help=help_text(name), rich_help_panel=_meta(name)["panel"],
                            show_default=False, metavar="", **extra)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[kind], info]))
    return parameters


def with_config_options(command):
    """Give `command` (which takes `options: dict` beside its own parameters) one option per config field."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "options"]
    own_hints = typing.get_type_hints(command, include_extras=True)
    own = [p.replace(annotation=own_hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    generated = config_parameters()
    names = {p.name for p in generated}

    @functools.wraps(command)
    def wrapper(**values):
        options = {name: values.pop(name) for name in list(values) if name in names}
        # List options arrive as text ("0,2,4"); parsed here, in the command's error boundary.
        options = {name: parse_value(name, value) if isinstance(value, str) and _cli_type(name) is str
                   and value_type(name)[0] is not str else value for name, value in options.items()}
        return command(options=options, **values)

    parameters = generated + own
    wrapper.__signature__ = inspect.Signature(parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # Typer must read the generated signature, not the original function's
    return wrapper
