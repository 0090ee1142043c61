"""`repro demo` (being built)."""

from repro.console import cli_errors
from repro.errors import ReproError


@cli_errors
def demo():
    """Not built yet."""
    raise ReproError("not built yet")
