"""`repro data` (being built)."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_datasets():
    """Not built yet."""
