"""`repro train`: train one run per seed of a model with a method, into reproducible run directories.

Thin (STYLE.md, principle 8): parse the options into a TrainConfig (recipe defaults, then every option
given), prepare the run directory (new, --overwrite, or --resume), and call repro.trainer.fit with a Rich
progress bar. Options left out keep the recipe's value; the resolved config is saved as config.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from repro.console import cli_errors, console
from repro.errors import ReproError

RUNS_ROOT = Path("runs")


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ReproError(f"{what} must be comma-separated integers, e.g. 0,1,2; got {text!r}") from None


def _float_list(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ReproError(f"{what} must be comma-separated numbers, e.g. 1,1,0.5; got {text!r}") from None


@cli_errors
def train(
    model: Annotated[Optional[str], typer.Option(help="vgg13 | alexnet | resnet18 (default: vgg13)")] = None,
    method: Annotated[Optional[str], typer.Option(help="baseline | bnet | proposed | report-proposed | report-maxprob (default: proposed)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="cifar10 | cifar100 | cinic10 | fashion-mnist | imagefolder | synthetic (default: synthetic)")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where data sets live (default: ./data or $REPRO_DATA)")] = None,
    subset: Annotated[Optional[int], typer.Option(help="Train on N class-balanced images (N // 5 test)")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="report (the reproduction report's setup) | modern (batch norm, augmentation, SGD schedule) (default: report)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (recipe: 30)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (report 128, modern 256)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (report 5e-4, modern 0.1)")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="L2 coefficient (report 0, modern 5e-4)")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adam | sgd (report adam, modern sgd)")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="SGD momentum (0.9)")] = None,
    nesterov: Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", help="SGD Nesterov momentum (modern: on)")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="constant | warmup-linear | warmup-cosine (report constant, modern warmup-linear)")] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(help="Epochs of linear warm-up (modern 2)")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing of every CE term (0)")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early stopping patience in epochs; 0 = never stop early (report 5, modern 0)")] = None,
    select_best: Annotated[Optional[bool], typer.Option("--select-best/--select-last", help="checkpoint.pt = lowest val loss or last epoch (report best, modern last)")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Fraction of training images held out (report 0.2, modern 0.1)")] = None,
    split_seed: Annotated[Optional[int], typer.Option(help="Seed of the train/val split and subset (0)")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random crop + flip (modern: on)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initialisation, batch order, augmentation, dropout (0)")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Several seeds, e.g. 0,1,2: one run per seed")] = None,
    exits: Annotated[Optional[str], typer.Option(help="Early-exit positions, e.g. 0,2,4 (the model's default)")] = None,
    width: Annotated[Optional[float], typer.Option(help="Channel multiplier (1.0)")] = None,
    batch_norm: Annotated[Optional[bool], typer.Option("--batch-norm/--no-batch-norm", help="Batch norm after each convolution (report off, modern on; resnet18 always on)")] = None,
    classifier: Annotated[Optional[str], typer.Option(help="report (512-4096-4096-C) | linear (report report, modern linear)")] = None,
    dropout: Annotated[Optional[bool], typer.Option("--dropout/--no-dropout", help="Dropout in the report classifier (on)")] = None,
    head: Annotated[Optional[str], typer.Option(help="Exit branch: conv (the report's) | pool (conv)")] = None,
    cost_weight: Annotated[Optional[float], typer.Option(help="proposed: lambda of the expected-cost term (0.1)")] = None,
    joint_weight: Annotated[Optional[float], typer.Option(help="Soft-output methods: weight of the per-exit CE sum (proposed 0, report-* 1)")] = None,
    mix: Annotated[Optional[str], typer.Option(help="Soft-output methods: probs | logits (probs)")] = None,
    alphas: Annotated[Optional[str], typer.Option(help="bnet: CE weight per exit, final included, e.g. 1,1,0.5 (all 1)")] = None,
    detach_confidence: Annotated[Optional[bool], typer.Option("--detach-confidence/--no-detach-confidence", help="report-*: stop gradients at the confidence gates (off)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (opt-in)")] = False,
    name: Annotated[Optional[str], typer.Option(help="Run name: runs/NAME (default: MODEL-METHOD-DATASET-seedSEED)")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (instead of runs/NAME)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory")] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory (the same options only)")] = None,
):
    """Train a multi-exit network (or the baseline) and save a reproducible run directory."""
    from repro.config import TrainConfig
    from repro.environment import select_device
    from repro.trainer import fit, resume_config

    if seed is not None and seeds is not None:
        raise ReproError("give --seed or --seeds, not both")
    seed_list = _int_list(seeds, "--seeds") if seeds is not None else [seed if seed is not None else 0]
    if not seed_list:
        raise ReproError("--seeds needs at least one seed, e.g. 0,1,2")
    if len(set(seed_list)) != len(seed_list):
        raise ReproError(f"--seeds has a repeated seed: {seeds}")
    if name is not None and run_dir is not None:
        raise ReproError("give --name or --run-dir, not both")
    options = dict(
        model=model, method=method, dataset=dataset, data_dir=str(data_dir) if data_dir else None, subset=subset,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer, momentum=momentum,
        nesterov=nesterov, schedule=schedule, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
        patience=patience, select_best=select_best,
        val_fraction=val_fraction, split_seed=split_seed, augment=augment, exits=_int_list(exits, "--exits"),
        width=width, batch_norm=batch_norm, classifier=classifier, dropout=dropout, head=head, cost_weight=cost_weight,
        joint_weight=joint_weight, mix=mix, alphas=_float_list(alphas, "--alphas"), detach_confidence=detach_confidence,
    )
    torch_device = select_device(device)

    if resume is not None:
        if overwrite or name is not None or run_dir is not None or seeds is not None:
            raise ReproError("--resume continues one existing run; drop --overwrite, --name, --run-dir and --seeds")
        run, config = resume_config(resume, {**options, "seed": seed, "recipe": recipe})
        jobs = [(config, run.path)]
    else:
        jobs = []
        for one_seed in seed_list:
            config = TrainConfig.from_recipe(recipe or "report", seed=one_seed, **options)
            path = _run_path(config, name, run_dir, one_seed, several=len(seed_list) > 1)
            jobs.append((config, path))
        # Refuse an existing run directory before training anything.
        for config, path in jobs:
            if path.is_dir() and any(path.iterdir()) and not overwrite:
                raise ReproError(f"run directory {path} already exists; pass --overwrite to replace it or --resume {path} to continue it")

    for config, path in jobs:
        verb = "resuming" if resume is not None else "training"
        console.print(f"[bold]{verb}[/] {config.model} / {config.method} on {config.dataset} "
                      f"(recipe {config.recipe}, seed {config.seed}) -> {path}", highlight=False, soft_wrap=True)
        with _RichProgress() as progress:
            result = fit(config, path, resume=resume is not None, overwrite=overwrite, device=torch_device,
                         compile=compile, progress=progress)
        run = result.run
        if result.already_finished:
            how = ", stopped early" if result.stopped_early else ""
            console.print(f"run {run.path} already finished: {result.epochs_done} of {config.epochs} epochs{how}; "
                          f"checkpoint.pt holds epoch {result.best_epoch}; nothing to do", highlight=False, soft_wrap=True)
            continue
        last = result.rows[-1] if result.rows else {}
        best = next((row for row in result.rows if row["epoch"] == result.best_epoch), last)
        console.print(f"[green]done[/] {run.path}: checkpoint.pt = epoch {result.best_epoch} "
                      f"(val loss {result.best_val_loss:.4f}, val acc method {best.get('val_acc_method', float('nan')):.4f})"
                      f"{', stopped early' if result.stopped_early else ''}", highlight=False, soft_wrap=True)


def _run_path(config, name: str | None, run_dir: Path | None, seed: int, several: bool) -> Path:
    if run_dir is not None:
        return Path(f"{run_dir}-seed{seed}") if several else run_dir
    if name is not None:
        return RUNS_ROOT / (f"{name}-seed{seed}" if several else name)
    return RUNS_ROOT / f"{config.model}-{config.method}-{config.dataset}-seed{seed}"


class _RichProgress:
    """repro.trainer.Progress as a Rich bar: images/s, loss and ETA of the epoch; one line per epoch."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class Throughput(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed:,.0f} img/s" if task.speed else "- img/s")

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Throughput(),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=console, transient=True,
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, num_images: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=num_images, loss="-")

    def advance(self, images: int, loss: float | None) -> None:
        if loss is None:
            self.progress.advance(self.task, images)
        else:
            self.progress.update(self.task, advance=images, loss=f"{loss:.4f}")

    def end_epoch(self, row: dict) -> None:
        from repro.trainer import describe_epoch

        self.progress.console.print(describe_epoch(row), highlight=False, soft_wrap=True, markup=False)
