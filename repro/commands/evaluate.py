"""`repro evaluate` (being built)."""

from repro.console import cli_errors
from repro.errors import ReproError


@cli_errors
def evaluate():
    """Not built yet."""
    raise ReproError("not built yet")
