"""Rebuild a run's pieces from its config: the model, the data splits, and a trained run ready to use.

The config saved in config.json is enough to rebuild a run (STYLE.md, principle 3): `build_model` makes
the same network the trainer trained, `load_data` the same splits, and `load_run` gives `repro eval` (and
anyone else) a trained run ready to use: its config, the best checkpoint's weights in eval mode, the
splits and the data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from repro import artifacts, rundir
from repro.config import TrainConfig
from repro.errors import ReproError, error_reason


def build_model(config: TrainConfig, dataset=None):
    """The MultiExitNetwork described by `config` (shapes from `dataset` when given, else from the config)."""
    from repro.models import create_model

    if dataset is not None:
        config = config.with_dataset(dataset)
    if config.num_classes is None:
        raise ReproError("the config does not say the number of classes; pass the data set to build_model")
    model = create_model(
        config.model,
        config.num_classes,
        config.in_channels,
        config.image_size,
        exits=config.exits,
        batch_norm=config.batch_norm,
        classifier=config.classifier,
        dropout=config.dropout,
        head=config.head,
        width=config.width,
    )
    if config.gate_bias is not None or config.gate_detach:
        model.set_gates(config.gate_bias, bool(config.gate_detach))
    if config.alphas is not None and len(config.alphas) != model.num_exits:
        raise ReproError(
            f"--alphas gives {len(config.alphas)} weights but {config.model} has {model.num_exits} exits "
            f"(exit positions {list(model.exit_positions)} + the final classifier); give one per exit"
        )
    return model


def load_data(config: TrainConfig):
    """(dataset, splits {"train", "val", "test"}) exactly as the run with this config used them."""
    from repro.data import load_dataset, make_splits

    data_dir = Path(config.data_dir) if config.data_dir else None
    dataset = load_dataset(config.dataset, data_dir=data_dir, seed=config.split_seed)
    splits = make_splits(dataset, val_fraction=config.val_fraction, seed=config.split_seed, subset=config.subset)
    # Checked here, before any run directory exists, so a too-small subset leaves nothing half-made behind.
    for name in ("train", "val", "test"):
        if len(splits[name][1]) == 0:
            raise ReproError(
                f"the {name} split of {config.dataset} is empty with --subset {config.subset} and "
                f"--val-fraction {config.val_fraction}; use a larger --subset or --val-fraction"
            )
    return dataset, splits


@dataclass
class LoadedRun:
    config: TrainConfig
    model: torch.nn.Module  # best weights (checkpoint.pt), eval mode, on the requested device
    splits: dict  # {"train", "val", "test"}: (images uint8 [N, C, H, W], labels int64 [N]) on the CPU
    dataset: object  # repro.data.ImageDataset
    run: rundir.RunDir
    epoch: int  # the epoch the checkpoint was saved after (1-based)
    val_loss: float  # its validation loss


def load_run(run_dir, device: str | torch.device = "cpu") -> LoadedRun:
    """A trained run: its config, the best weights in eval mode on `device`, its splits and data set."""
    run = rundir.open_run(Path(run_dir))
    # config.json is the source of truth for what the run is; the checkpoint must have been trained with it.
    # Where the data lives may differ (data moves, and `repro train --resume --data-dir` records the new place).
    config = artifacts.read_config(run)
    checkpoint = artifacts.read_checkpoint(run)
    trained = TrainConfig.from_dict(checkpoint.config, source=f"the config inside {run.file(rundir.CHECKPOINT)}")
    differences = trained.differences(config, ignore=("data_dir",))
    if differences:
        raise ReproError(f"{run.file(rundir.CHECKPOINT)} was trained with another config than {run.file(rundir.CONFIG)} "
                         f"({'; '.join(differences[:3])}); retrain it, or restore the config.json it came with")
    dataset, splits = load_data(config)
    model = build_model(config, dataset)
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as error:
        reason = error_reason(error)
        raise ReproError(f"checkpoint of run {run.path} does not fit the model its config describes ({reason})") from None
    model.to(device).eval()
    return LoadedRun(config, model, splits, dataset, run, checkpoint.epoch, checkpoint.val_loss)
