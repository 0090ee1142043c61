"""One training loop for every method: `train_one_epoch`, `evaluate`, and `fit` for a whole run.

Methods are losses (repro.methods); this loop knows nothing about them beyond `method.compute` (the
loss and its logged terms), `method.method_log_probs` (the method's own output) and
`method.confidence_gates` (the g_b it mixes with), so baseline, B-Net, the paper's gates and the report's
variants all train here (STYLE.md, principle 4; the torchvision classification reference's shape).

Reproducibility. All randomness of epoch e (batch order, augmentation, dropout) is derived from (seed, e)
alone: `torch.manual_seed(epoch_seed(seed, e))` at the start of the epoch and `loader.set_epoch(e)`. The
learning rate is a pure function of the step number. So the state after epoch e is fully described by the
weights, the optimizer's state and the early-stopping counters, which `last.pt` holds; resuming from it
(even after `kill -9` mid-epoch: the interrupted epoch restarts) gives, on the CPU, bitwise the same
weights as an uninterrupted run. On CUDA: bf16 autocast, channels_last and fused optimizers (fast, but
not bitwise reproducible); `compile=True` adds torch.compile.

Epochs are numbered from 1 in metrics.csv, train.log and checkpoints ("epoch": epochs completed).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch

from repro import rundir
from repro.config import TrainConfig
from repro.errors import ReproError


class Progress(Protocol):
    """What `fit` reports while it runs; the CLI passes a Rich progress bar, tests pass nothing."""

    def start_epoch(self, epoch: int, epochs: int, num_images: int) -> None: ...

    def advance(self, images: int, loss: float | None) -> None: ...

    def end_epoch(self, row: dict) -> None: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of epoch `epoch` (0-based) of a run seeded `seed`: distinct for every (seed, epoch)."""
    return seed * 1_000_003 + epoch + 1


def learning_rate(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step `step` (0-based) of `total_steps`.

    constant: lr. warmup-linear / warmup-cosine: linear from lr/warmup_steps up to lr over the warm-up,
    then linear or half-cosine decay to 0 at the end of the last epoch.
    """
    if config.schedule == "constant":
        return config.lr
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if config.schedule == "warmup-linear":
        return config.lr * (1.0 - progress)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(config: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    fused = device.type == "cuda"  # one kernel for the whole update on the GPU
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay, fused=fused
    )


@dataclass
class Accelerator:
    """How batches run on this device: autocast dtype (None = fp32) and memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> "Accelerator":
        if device.type == "cuda":
            # Fixed input shapes: let cuDNN pick the fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True
            return cls(device, torch.bfloat16, True)
        return cls(device)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def train_one_epoch(
    model,
    method,
    loader,
    optimizer,
    relative_costs: torch.Tensor,
    lr_at=None,
    first_step: int = 0,
    accelerator: Accelerator | None = None,
    progress: Progress | None = None,
    loss_every: int = 10,
) -> dict[str, float]:
    """One pass over `loader`. Returns {"loss", <method terms>..., "images", "seconds"} (means over images).

    lr_at(step) sets the learning rate before each step (None: leave it). A non-finite loss raises
    NonFiniteLoss (a ReproError): on the CPU before the optimizer step that would spread it into the
    weights; on the GPU at the end of the epoch (checking every step would cost a sync per step). Either
    way nothing of the failed epoch is saved, so the last good checkpoint stays.
    """
    accelerator = accelerator or Accelerator(torch.device("cpu"))
    check_every_step = accelerator.device.type == "cpu"  # free on the CPU; a sync per step on the GPU
    model.train()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    total_terms: dict[str, torch.Tensor] = {}
    images = 0
    for index, (x, y) in enumerate(loader):
        if lr_at is not None:
            lr = lr_at(first_step + index)
            for group in optimizer.param_groups:
                group["lr"] = lr
        with accelerator.autocast():
            out = model(accelerator.prepare(x))
            loss, terms = method.compute(out, y, relative_costs)
        if check_every_step and not torch.isfinite(loss):
            raise NonFiniteLoss(first_step + index, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = y.shape[0]
        images += n
        total_loss += loss.detach().double() * n
        for name, value in terms.items():
            total_terms[name] = total_terms.get(name, 0) + value.double() * n
        if progress is not None:
            progress.advance(n, float(loss.detach()) if index % loss_every == 0 else None)
    stats = {"loss": float(total_loss) / max(images, 1)}
    if not math.isfinite(stats["loss"]):
        raise NonFiniteLoss(None, stats["loss"])
    stats.update({name: float(value) / images for name, value in total_terms.items()})
    stats["images"] = float(images)
    stats["seconds"] = time.perf_counter() - start
    return stats


class NonFiniteLoss(ReproError):
    def __init__(self, step: int | None, value: float):
        where = f"at step {step}" if step is not None else "during the epoch"
        super().__init__(f"the training loss became {value} {where}; stopping (the last good checkpoint is kept). "
                         f"Try a lower --lr")


@torch.no_grad()
def evaluate(model, method, loader, relative_costs: torch.Tensor, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Method loss, accuracy of every exit and of the method's output, mean gate per early exit and
    mean expected relative cost over `loader`, as {"loss", "acc_exit{b}", "acc_method",
    "gate_mean_exit{b}", "expected_cost"} (accuracies are fractions in [0, 1])."""
    accelerator = accelerator or Accelerator(torch.device("cpu"))
    model.eval()
    device = accelerator.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = None
    correct_method = torch.zeros((), device=device, dtype=torch.int64)
    gate_sums = None
    cost_sum = torch.zeros((), device=device, dtype=torch.float64)
    images = 0
    for x, y in loader:
        with accelerator.autocast():
            out = model(accelerator.prepare(x))
            loss, _ = method.compute(out, y, relative_costs)
            method_log_probs = method.method_log_probs(out)
            gates = method.confidence_gates(out)
            cost = method.expected_cost(out, relative_costs)
        n = y.shape[0]
        images += n
        loss_sum += loss.double() * n
        hits = torch.stack([(f.argmax(dim=1) == y).sum() for f in out.logits])
        correct = hits if correct is None else correct + hits
        correct_method += (method_log_probs.argmax(dim=1) == y).sum()
        if gates:
            sums = torch.stack([g.double().sum() for g in gates])
            gate_sums = sums if gate_sums is None else gate_sums + sums
        cost_sum += cost.double().sum() if cost.dim() else cost.double() * n
    if images == 0:
        raise ReproError("the evaluation split is empty; use a larger --subset or --val-fraction")
    stats = {"loss": float(loss_sum) / images}
    stats.update({f"acc_exit{b}": int(c) / images for b, c in enumerate(correct.tolist())})
    stats["acc_method"] = int(correct_method) / images
    if gate_sums is not None:
        stats.update({f"gate_mean_exit{b}": float(s) / images for b, s in enumerate(gate_sums.tolist())})
    stats["expected_cost"] = float(cost_sum) / images
    return stats


# ---------------------------------------------------------------------------------------------- whole runs


@dataclass
class FitResult:
    run: rundir.RunDir
    config: TrainConfig
    epochs_done: int  # epochs completed in total (including before a resume)
    best_epoch: int  # the epoch checkpoint.pt holds (1-based): lowest val loss, or the last with --select-last
    best_val_loss: float  # its validation loss
    stopped_early: bool
    already_finished: bool = False  # resume of a run that had nothing left to do
    rows: list[dict] = field(default_factory=list)  # metrics.csv


def start_run(config: TrainConfig, path: Path, overwrite: bool = False) -> rundir.RunDir:
    """A fresh run directory holding config.json (refuses an existing one unless `overwrite`)."""
    run = rundir.create_run_dir(Path(path), overwrite=overwrite)
    rundir.write_json(run.file(rundir.CONFIG), config.to_dict())
    return run


def resume_config(path: Path, given: dict) -> tuple[rundir.RunDir, TrainConfig]:
    """The saved config of run `path`; refuses when an option given now differs from it, naming each."""
    run = rundir.open_run(Path(path))
    saved = TrainConfig.from_dict(rundir.read_config(run))
    differences = []
    for name, value in given.items():
        if value is None or name == "data_dir":  # data may move; its fingerprint is checked instead
            continue
        current = getattr(saved, name)
        if isinstance(current, (list, tuple)) and value is not None:
            value = type(current)(value)
        if current != value:
            differences.append(f"--{name.replace('_', '-')} {value!r} (the run has {current!r})")
    if differences:
        raise ReproError(f"cannot resume {run.path} with different options: {'; '.join(differences)}; "
                         "drop them, or start a new run")
    if given.get("data_dir"):
        saved = replace(saved, data_dir=str(given["data_dir"]))
    return run, saved


def fit(
    config: TrainConfig,
    path: Path | str | rundir.RunDir,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
    compile: bool = False,
    progress: Progress | None = None,
) -> FitResult:
    """Train `config` into the run directory `path`, writing metrics.csv, train.log, checkpoint.pt (best,
    or last, weights) and last.pt after every epoch, atomically.

    resume=False: a new run; the data set is loaded and the model built (so a bad config fails) before the
    directory is created, which refuses an existing one unless `overwrite`. resume=True: continue the run
    in `path` from its last.pt (from scratch when the first epoch never finished); `config` is the run's
    own (see `resume_config`). A finished run is left alone (FitResult.already_finished).
    `path` may also be a RunDir already made by `start_run`: training then starts there, or continues
    from its last.pt when it has one.
    """
    from repro.build import build_model, load_data
    from repro.data import DeviceLoader
    from repro.environment import environment
    from repro.methods import get_method

    device = torch.device(device)
    accelerator = Accelerator.for_device(device)
    run, state = None, None
    if isinstance(path, rundir.RunDir):
        run, resume = path, resume or path.has(rundir.LAST)
    if resume:
        run = run or rundir.open_run(Path(path))
        if run.has(rundir.LAST):
            state = rundir.load_torch(run.file(rundir.LAST), f"last.pt of run {run.path}")
            if state.get("finished"):
                return FitResult(run, config, state["epoch"], state["selected_epoch"], state["selected_val_loss"],
                                 state["stopped_early"], True, state["rows"])

    dataset, splits = load_data(config)
    config = config.with_dataset(dataset)
    torch.manual_seed(config.seed)  # initial weights depend on the seed only
    model = build_model(config, dataset)
    config = replace(config, exits=list(model.exit_positions))
    if run is None:
        run = start_run(config, Path(path), overwrite=overwrite)
    rundir.write_json(run.file(rundir.CONFIG), config.to_dict())
    _write_environment(run, environment(device, dataset.name, dataset.fingerprint, config.seed), resumed=resume)
    method = get_method(config.method, **config.method_options())
    relative_costs = model.costs.relative().to(device)
    model.to(device)
    if accelerator.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model, device)

    # best_*: the lowest validation loss so far (early stopping); selected_*: what checkpoint.pt holds.
    start_epoch, best_val_loss, best_epoch, bad_epochs, rows = 0, math.inf, 0, 0, []
    selected_epoch, selected_val_loss = 0, math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_val_loss, best_epoch = state["epoch"], state["best_val_loss"], state["best_epoch"]
        selected_epoch, selected_val_loss = state["selected_epoch"], state["selected_val_loss"]
        bad_epochs, rows = state["bad_epochs"], list(state["rows"])
        rundir.append_log(run, f"resumed after epoch {start_epoch}")
    else:
        rundir.append_log(run, f"config {config.to_dict()}")

    train_images, train_labels = splits["train"]
    drop_last = len(train_labels) % config.batch_size == 1  # a batch of one breaks batch norm
    common = dict(device=device, mean=dataset.mean, std=dataset.std)
    train_loader = DeviceLoader(train_images, train_labels, config.batch_size, shuffle=True, seed=config.seed,
                                crop=config.augment, flip=config.augment, drop_last=drop_last, **common)
    val_loader = DeviceLoader(*splits["val"], max(config.batch_size, 256), **common)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs

    def lr_at(step: int) -> float:
        return learning_rate(config, step, total_steps, steps_per_epoch)

    runner = torch.compile(model) if compile else model
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(epoch_seed(config.seed, epoch))
        train_loader.set_epoch(epoch)
        if progress is not None:
            progress.start_epoch(epoch + 1, config.epochs, len(train_loader) * config.batch_size if drop_last else len(train_labels))
        try:
            train = train_one_epoch(runner, method, train_loader, optimizer, relative_costs, lr_at,
                                    epoch * steps_per_epoch, accelerator, progress)
        except NonFiniteLoss as error:
            rundir.append_log(run, f"epoch {epoch + 1}: stopped: {error}")
            raise
        val = evaluate(runner, method, val_loader, relative_costs, accelerator)
        if not math.isfinite(val["loss"]):
            message = f"the validation loss became {val['loss']} in epoch {epoch + 1}; stopping (the last good checkpoint is kept)"
            rundir.append_log(run, message)
            raise ReproError(message)
        improved = val["loss"] < best_val_loss
        if improved:
            best_val_loss, best_epoch, bad_epochs = val["loss"], epoch + 1, 0
        else:
            bad_epochs += 1
        if improved or not config.select_best:
            selected_epoch, selected_val_loss = epoch + 1, val["loss"]
            rundir.save_torch(run.file(rundir.CHECKPOINT), {"model": _cpu_state(model), "config": config.to_dict(),
                                                            "epoch": selected_epoch, "val_loss": selected_val_loss})
        row = _metrics_row(epoch + 1, train, val, model.num_exits, lr_at(min((epoch + 1) * steps_per_epoch, total_steps) - 1))
        rows.append(row)
        rundir.write_csv(run.file(rundir.METRICS), rows)
        rundir.append_log(run, _log_line(row, improved))
        stopped_early = config.patience > 0 and bad_epochs >= config.patience and epoch + 1 < config.epochs
        finished = stopped_early or epoch + 1 == config.epochs
        rundir.save_torch(run.file(rundir.LAST), {
            "model": _cpu_state(model), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
            "best_val_loss": best_val_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
            "selected_epoch": selected_epoch, "selected_val_loss": selected_val_loss,
            "rows": rows, "finished": finished, "stopped_early": stopped_early,
        })
        if progress is not None:
            progress.end_epoch(row)
        if stopped_early:
            rundir.append_log(run, f"early stop: no lower validation loss for {config.patience} epochs; best epoch {best_epoch}")
            break
    rundir.append_log(run, f"finished: checkpoint.pt holds epoch {selected_epoch} (val loss {selected_val_loss:.4f})")
    return FitResult(run, config, len(rows), selected_epoch, selected_val_loss, stopped_early, False, rows)


def _cpu_state(model: torch.nn.Module) -> dict:
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}


def _write_environment(run: rundir.RunDir, env: dict, resumed: bool) -> None:
    if resumed and run.has(rundir.ENV):
        first = rundir.read_json(run.file(rundir.ENV))
        if first.get("dataset_fingerprint") != env["dataset_fingerprint"]:
            raise ReproError(f"the data set's fingerprint changed since run {run.path} started "
                             f"({first.get('dataset_fingerprint')} -> {env['dataset_fingerprint']}); refusing to resume on other data")
        first.setdefault("resumed", []).append(env)
        env = first
    rundir.write_json(run.file(rundir.ENV), env)


def _metrics_row(epoch: int, train: dict, val: dict, num_exits: int, lr: float) -> dict:
    """One metrics.csv row in the contract's column order; gate columns empty when there are no gates."""
    row = {"epoch": epoch, "train_loss": train["loss"]}
    row.update({f"train_{name}": value for name, value in train.items() if name not in ("loss", "images", "seconds")})
    row["val_loss"] = val["loss"]
    row.update({f"val_acc_exit{b}": val[f"acc_exit{b}"] for b in range(num_exits)})
    row["val_acc_method"] = val["acc_method"]
    row.update({f"gate_mean_exit{b}": val.get(f"gate_mean_exit{b}", "") for b in range(num_exits - 1)})
    row["expected_cost"] = val["expected_cost"]
    row["lr"] = lr
    row["seconds"] = train["seconds"]
    row["images_per_second"] = train["images"] / train["seconds"] if train["seconds"] > 0 else 0.0
    return row


def describe_epoch(row: dict) -> str:
    """One line per epoch, for the terminal and train.log alike: losses and terms, accuracies in percent
    (the method's output, then every exit shallow to final), mean gate per early exit, expected cost."""
    terms = "  ".join(
        f"{key[len('train_'):]} {value:.4f}" for key, value in row.items()
        if key.startswith("train_") and key != "train_loss" and not key.startswith("train_ce_exit")
    )
    exits = " ".join(f"{100 * row[k]:.1f}" for k in row if k.startswith("val_acc_exit"))
    gates = " ".join(f"{row[k]:.2f}" for k in row if k.startswith("gate_mean_exit") and row[k] is not None)
    return (
        f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}{'  ' + terms if terms else ''}  "
        f"val loss {row['val_loss']:.4f}  val acc {100 * row['val_acc_method']:.2f}%  exits [{exits}]"
        f"{f'  gates [{gates}]' if gates else ''}  cost {row['expected_cost']:.3f}  "
        f"lr {row['lr']:.3g}  {row['images_per_second']:,.0f} img/s"
    )


def _log_line(row: dict, improved: bool) -> str:
    return f"{describe_epoch(row)}{'  (best so far)' if improved else ''}  {row['seconds']:.1f} s"
