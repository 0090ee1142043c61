"""`repro train`: train one run per seed of a model with a method, into reproducible run directories.

Thin (STYLE.md, principle 8): the training options come from TrainConfig's fields (config_options); the
command plans the runs (repro.plan), then calls repro.trainer.fit for each with a Rich progress display.
Options left out keep the recipe's value; the resolved config is saved as config.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from repro.commands.config_options import with_config_options
from repro.commands.progress import TrainingProgress, make_progress
from repro.config import RUN
from repro.console import cli_errors, say


@cli_errors
@with_config_options
def train(
    options: dict,
    seeds: Annotated[Optional[str], typer.Option(help="Several seeds, e.g. 0,1,2: one run per seed", rich_help_panel=RUN,
                                                 metavar="LIST")] = None,
    device: Annotated[str, typer.Option(help="auto (cuda when there is one) | cpu | cuda", rich_help_panel=RUN, metavar="NAME")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model", rich_help_panel=RUN)] = False,
    name: Annotated[Optional[str], typer.Option(help="Run name: runs/NAME [default: MODEL-METHOD-DATASET-seedSEED]",
                                                rich_help_panel=RUN, metavar="NAME")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory, instead of runs/NAME", rich_help_panel=RUN,
                                                    metavar="PATH")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory", rich_help_panel=RUN)] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory (give no other option, or the same)",
                                                   rich_help_panel=RUN, metavar="PATH")] = None,
):
    """Train a multi-exit network (or the baseline) and save a reproducible run directory."""
    from repro.environment import select_device
    from repro.errors import ReproError
    from repro.parsing import number_list
    from repro.plan import PlannedRun, plan_runs
    from repro.trainer import fit, resume_config, watched

    recipe = options.pop("recipe")
    torch_device = select_device(device)
    seed_list = number_list(seeds, "--seeds", int) if seeds is not None else None
    if resume is not None:
        if overwrite or name is not None or run_dir is not None or seeds is not None:
            raise ReproError("--resume continues one existing run; drop --overwrite, --name, --run-dir and --seeds")
        run, config = resume_config(resume, {**options, "recipe": recipe})
        planned = [PlannedRun(config, run.path)]
    else:
        planned = plan_runs(options, recipe, seed_list, name, run_dir, overwrite)

    for job in planned:
        config = job.config
        verb = "resuming" if resume is not None else "training"
        say(f"[bold]{verb}[/] {config.model} / {config.method} on {config.dataset} "
            f"(recipe {config.recipe}, seed {config.seed}) -> {job.path}")
        hint = cpu_hint(config, torch_device)
        if hint:
            say(f"[dim]{hint}[/]")
        with make_progress() as bar:
            result = fit(config, job.path, resume=resume is not None, overwrite=overwrite, device=torch_device,
                         compile=compile, progress=TrainingProgress(bar))
        state = result.state
        if result.already_finished:
            how = ", stopped early" if state.stopped_early else ""
            say(f"run {result.run.path} already finished: {state.epoch} of {config.epochs} epochs{how}; "
                f"checkpoint.pt holds epoch {state.selected_epoch}; nothing to do")
            continue
        selected = next((row for row in state.rows if row["epoch"] == state.selected_epoch), state.rows[-1])
        say(f"[green]done[/] {result.run.path}: checkpoint.pt = epoch {state.selected_epoch} "
            f"(val {watched(config)} {selected[f'val_{watched(config)}']:.4f}, val acc {selected['val_acc_method']:.2%})"
            f"{', stopped early' if state.stopped_early else ''}")


def cpu_hint(config, device) -> str | None:
    """One line on a CPU when the run is large: what makes it fit (the progress bar then shows the total)."""
    if device.type != "cpu" or (config.width < 0.5 and (config.subset or 0) <= 10000):
        return None
    faster = "" if config.precision in ("auto", "bf16") else " --precision bf16 (on CPUs with native bf16),"
    return (f"Training on the CPU: at width {config.width:g} on {'all' if config.subset is None else config.subset} images "
            f"an epoch takes minutes; for a quick look try{faster} --width 0.25 --subset 5000 --epochs 5.")
