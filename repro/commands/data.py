"""`repro data list|info|fetch|verify`: see which datasets exist, where they are, and get them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from repro.console import Command, Group, cli_errors, console, say

app = typer.Typer(cls=Group, no_args_is_help=True, help="List, inspect, fetch and verify datasets.")

DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Data folder (default ./data or $REPRO_DATA); for imagefolder, the ROOT folder or .tar.gz."),
]
Name = Annotated[str, typer.Argument(help="Dataset name (see `repro data list`).")]


@app.command("list", cls=Command)
@cli_errors
def list_command(data_dir: DataDir = None):
    """List the registered datasets, their shapes and splits, and whether their files are here (`info` says more)."""
    from rich.table import Table

    from repro.data.load import locate, resolve_data_dir
    from repro.data.registry import SPECS

    folder = resolve_data_dir(data_dir)
    say(f"data folder: {folder}")
    table = Table()
    for column in ("name", "classes", "image", "splits", "status"):
        table.add_column(column, no_wrap=column == "name")
    where = {}
    for spec in SPECS.values():
        if spec.embedded:
            status = "embedded"
        elif spec.needs_root:
            status = "pass --data-dir ROOT"
        else:
            found = locate(spec, folder)
            status = "missing" if found is None else "found"
            if found is not None:
                where[spec.name] = found.label
        shape = "from files" if spec.channels is None else f"{spec.channels}x{spec.image_size}x{spec.image_size}"
        classes = "from folders" if spec.classes is None else str(len(spec.classes))
        table.add_row(spec.name, classes, shape, "/".join(spec.splits), status)
    console.print(table)
    # Paths below the table, whole: a table column would cut them to its width.
    for name, label in where.items():
        say(f"{name}: {label}", markup=False)


@app.command("info", cls=Command)
@cli_errors
def info_command(
    name: Name,
    data_dir: DataDir = None,
    seed: Annotated[int, typer.Option(help="Generation seed (synthetic only).")] = 0,
):
    """Describe one dataset: where it comes from, and, when present, its splits, per-class counts and statistics."""
    from repro.data.load import load_dataset, locate, missing_message, resolve_data_dir
    from repro.data.registry import get_spec, search_dirs

    spec = get_spec(name)
    say(f"[bold]{spec.name}[/]: {spec.summary}")
    if spec.homepage:
        say(f"homepage: {spec.homepage}")
    for remote in spec.files:
        say(f"file: {remote.filename}  md5 {remote.md5}  from {remote.url or 'no public URL: place it by hand'}")
    if spec.needs_root and data_dir is None:
        say("layout: ROOT/{train,test[,valid]}/<class>/*.png|jpg (a folder or .tar.gz); pass --data-dir ROOT")
        return
    folder = resolve_data_dir(data_dir)
    if not spec.embedded and not spec.needs_root:
        say("searched: " + ", ".join(str(p) for p in search_dirs(spec, folder)))
        if locate(spec, folder) is None:
            say(f"status: missing ({missing_message(spec, folder)})")
            return
    _describe(load_dataset(name, data_dir=data_dir, seed=seed))


@app.command("fetch", cls=Command)
@cli_errors
def fetch_command(name: Name, data_dir: DataDir = None):
    """Download the official files (streamed, md5-checked, then renamed into place) into DATA_DIR/NAME."""
    from repro.data.load import fetch_dataset
    from repro.data.registry import get_spec

    if get_spec(name).embedded:
        say(f"{name} is embedded (generated from a seed); nothing to fetch")
        return
    for path, status in fetch_dataset(name, data_dir):
        say(f"{status}: {path}")


@app.command("verify", cls=Command)
@cli_errors
def verify_command(name: Name, data_dir: DataDir = None):
    """Check the files' md5 sums against the published ones, then read every image and report the counts."""
    from repro.data.load import load_dataset, locate, resolve_data_dir, verify_source
    from repro.data.registry import get_spec

    spec = get_spec(name)
    # load_dataset below raises the one-line errors for missing data; here only the official files' md5s.
    source = None if spec.embedded or (spec.needs_root and data_dir is None) else locate(spec, resolve_data_dir(data_dir))
    if source is not None:
        for path in verify_source(spec, source):
            say(f"md5 ok: {path}")
    dataset = load_dataset(name, data_dir=data_dir)
    _describe(dataset)
    say(f"[green]ok[/]: {dataset.name} reads cleanly")


def _describe(dataset) -> None:
    from rich.table import Table

    say(f"source: {dataset.source}")
    say(f"images: {dataset.channels}x{dataset.image_size}x{dataset.image_size}, {dataset.num_classes} classes, "
        f"fingerprint {dataset.fingerprint}")
    say("mean: " + ", ".join(f"{m:.4f}" for m in dataset.mean) + "   std: " + ", ".join(f"{s:.4f}" for s in dataset.std))
    counts = dataset.counts()
    table = Table(title="images per split")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("per class (min..max)", justify="right")
    for split, per_class in counts.items():
        table.add_row(split, str(sum(per_class)), f"{min(per_class)}..{max(per_class)}")
    console.print(table)
