"""`repro train` (being built)."""

from repro.console import cli_errors
from repro.errors import ReproError


@cli_errors
def train():
    """Not built yet."""
    raise ReproError("not built yet")
