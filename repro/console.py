"""Terminal output for the CLI: one Rich console for results, one for errors, and the error boundary.

Commands are thin (STYLE.md, principle 8): they parse options, call one library function and print.
`cli_errors` turns a `ReproError` from anywhere below into one red line on stderr and the error's exit
code, never a traceback.
"""

from __future__ import annotations

import functools
import re
import textwrap

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from repro.errors import ReproError

console = Console()
err_console = Console(stderr=True)


def say(message: str, markup: bool = True, out: Console | None = None) -> None:
    """Print a message wrapped at spaces to the terminal's width, never inside a word: a path or a command
    longer than the line stays whole (the terminal folds it on screen; a copy of it is intact)."""
    out = out or console
    lines = [textwrap.fill(line, width=max(20, out.width), break_long_words=False, break_on_hyphens=False)
             for line in str(message).splitlines() or [""]]
    out.print("\n".join(lines), markup=markup, highlight=False, soft_wrap=True)


def fail(message: str, exit_code: int = 1):
    err_console.print(f"[bold red]Error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)


def cli_errors(command):
    """Decorator for Typer commands: ReproError -> one line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ReproError as error:
            fail(_escape(str(error)), error.exit_code)
        except OSError as error:
            # A path the user gave that cannot be created, read or written (not a folder, no permission,
            # disk full): the operating system's reason and the path, as one line.
            where = f": {error.filename}" if error.filename else ""
            fail(_escape(f"{error.strerror or error}{where}"))
        except KeyboardInterrupt:
            fail("interrupted; everything written so far is kept (resume a training run with `repro train --resume RUN`)", 130)

    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


_LIST_TYPE = re.compile(r"<list\[(\w+)\]>")


def _untyped_switches(params):
    """Switches (--help, --overwrite, --augment/--no-augment) take no value: list them without a "<bool>".
    Lists show their element type the way a user types them, "<path>..." instead of Typer's "<list[Path]>"."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        show_type = getattr(param, "display_type_rich", None)
        if show_type is not None and not getattr(show_type, "plain_lists", False):
            def plain(ctx, show_type=show_type):
                shown = show_type(ctx)
                return _LIST_TYPE.sub(lambda m: f"<{m.group(1).lower()}>...", shown) if shown else shown
            plain.plain_lists = True
            param.display_type_rich = plain
    return params


class Command(TyperCommand):
    def get_params(self, ctx):
        return _untyped_switches(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx):
        return _untyped_switches(super().get_params(ctx))
