"""One training loop for every method: `train_one_epoch`, `validate`, and `fit` for a whole run.

Methods are losses (repro.methods); this loop knows nothing about them beyond `method.compute` (the
loss, its logged terms and the method's own output) and `method.confidence_gates` (the g_b it mixes
with), so baseline, B-Net, the paper's gates and the report's variants all train here (STYLE.md,
principle 4; the torchvision classification reference's shape). `fit` is three steps: `prepare`
(data, model, method, optimizer, loaders: everything a run needs, built from its config), the resume
point (`TrainingState` from last.pt), and `run_epochs` (the loop, early stopping, checkpoints, logs).

Reproducibility. All randomness of epoch e (batch order, augmentation, dropout) is derived from (seed, e)
alone: `torch.manual_seed(epoch_seed(seed, e))` at the start of the epoch and `loader.set_epoch(e)`. The
learning rate is a pure function of the step number. So the state after epoch e is fully described by the
weights, the optimizer's state and the early-stopping counters, which `last.pt` holds; resuming from it
(even after `kill -9` mid-epoch: the interrupted epoch restarts) gives, on the CPU, bitwise the same
weights as an uninterrupted run. Precision (`config.precision`): bf16 autocast and channels-last where
the device has native bf16 (reproducible on the same CPU, not bitwise equal to fp32); on CUDA also fused
optimizers (fast, not bitwise reproducible); `compile=True` adds torch.compile.

Stopping. state.json says at every moment whether the run is running, finished, interrupted (Ctrl-C,
SIGTERM) or failed (with its error); SIGTERM is handled like Ctrl-C: the epoch in progress is abandoned,
files being written are finished first, and the error names the command that resumes. last.pt is
deleted once the run has finished: nothing resumes a finished run, and it is three times the model.

Epochs are numbered from 1 in metrics.csv, train.log and checkpoints ("epoch": epochs completed).
"""

from __future__ import annotations

import contextlib
import math
import shlex
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from repro import artifacts, rundir
from repro.artifacts import TrainingState
from repro.config import TrainConfig
from repro.errors import ReproError


class Progress(Protocol):
    """What `fit` reports while it runs; the CLI passes a Rich progress bar, tests pass nothing."""

    def start_epoch(self, epoch: int, epochs: int, num_images: int) -> None: ...
    """epoch: 1-based; num_images: training images in each epoch (so epochs x num_images is the run)."""

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


def native_bf16(device: torch.device) -> bool:
    """Whether this device runs bf16 matrix work natively (CUDA with bf16 support; a CPU with AVX-512 BF16 or AMX).

    Not oneDNN's "bf16 supported", which is also true on plain AVX-512 CPUs where it emulates bf16: measured on
    an Intel Xeon @ 2.80GHz with AVX-512 but no AVX-512 BF16 (2 threads, width 0.5, batch 128,
    benchmarks/bench_precision.py), bf16 trained at 0.61x (AlexNet, 279 -> 169 img/s) and 0.59x (ResNet-18,
    88 -> 52 img/s) of fp32's speed, where a CPU with AVX-512 BF16 trains 1.9x faster."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(flag() for flag in flags if flag is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 where the device has native bf16 support, else fp32; fp32 and bf16 stay as given."""
    if precision == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "fp32"
    return precision


@dataclass
class Accelerator:
    """How batches run on this device: autocast dtype (None = fp32) and memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device, precision: str = "fp32") -> "Accelerator":
        """precision: fp32 or bf16 (resolved, see `resolve_precision`). bf16 autocasts convolutions and matrix
        products and keeps activations channels-last, which oneDNN's bf16 kernels on the CPU and cuDNN's on
        the GPU both prefer (measured on the project's 2-core CPU, VGG-13 width 0.5 with nine exits, bnet,
        batch 128: fp32 200, bf16 335, bf16 + channels-last 391 img/s). Losses stay float32 (repro.methods)."""
        device = torch.device(device)
        if device.type == "cuda":
            # Fixed input shapes: let cuDNN pick the fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True
        if precision == "bf16":
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
    """One pass over `loader`. Returns {"loss", <method terms>..., "images", "seconds"} (means over images),
    and for soft-output methods "grad_exit{b}": the mean over steps of the gradient norm that reaches the
    layer producing exit b's logits (the collapse of the paper's loss shows there: deep exits get ~0).

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
    heads = model.exit_output_layers() if method.soft_output and hasattr(model, "exit_output_layers") else []
    grad_sums = torch.zeros(len(heads), device=accelerator.device, dtype=torch.float64)
    steps = 0
    for index, (x, y) in enumerate(loader):
        if lr_at is not None:
            lr = lr_at(first_step + index)
            for group in optimizer.param_groups:
                group["lr"] = lr
        with accelerator.autocast():
            out = model(accelerator.prepare(x))
            loss, terms, _ = method.compute(out, y, relative_costs)
        if check_every_step and not torch.isfinite(loss):
            raise NonFiniteLoss(first_step + index, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if heads:  # no sync: the norms stay on the device until the epoch ends
            grad_sums += torch.stack([_grad_norm(head) for head in heads]).double()
        optimizer.step()
        steps += 1
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
    stats.update({f"grad_exit{b}": float(value) / max(steps, 1) for b, value in enumerate(grad_sums.tolist())})
    stats["images"] = float(images)
    stats["seconds"] = time.perf_counter() - start
    return stats


def _grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """L2 norm of a layer's weight gradient (0 when the loss did not reach it)."""
    grad = module.weight.grad
    return grad.float().norm() if grad is not None else torch.zeros((), device=module.weight.device)


class NonFiniteLoss(ReproError):
    def __init__(self, step: int | None, value: float):
        where = f"at step {step}" if step is not None else "during the epoch"
        super().__init__(f"the training loss became {value} {where}; stopping (the last good checkpoint is kept). "
                         f"Try a lower --lr")


@torch.no_grad()
def validate(model, method, loader, relative_costs: torch.Tensor, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Method loss, accuracy of every exit and of the method's output, mean gate per early exit and
    mean expected cost over `loader`, as {"loss", "acc_exit{b}", "acc_method", "gate_mean_exit{b}",
    "cost_vs_final"} (accuracies are fractions in [0, 1]; cost_vs_final is the expected MACs over the final
    exit's, the regulariser's unit); for soft-output methods also "route_exit{b}" for every exit, final
    included: the mean routing mass m_b (repro.methods.routing_mass), where the soft output sends samples."""
    from repro.methods import routing_mass

    accelerator = accelerator or Accelerator(torch.device("cpu"))
    model.eval()
    device = accelerator.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    objective_sum = None  # soft-output methods: their objective without the per-exit terms (SoftOutputMethod.stop_on)
    correct = None
    correct_method = torch.zeros((), device=device, dtype=torch.int64)
    gate_sums = None
    route_sums = None
    cost_sum = torch.zeros((), device=device, dtype=torch.float64)
    images = 0
    for x, y in loader:
        with accelerator.autocast():
            out = model(accelerator.prepare(x))
            loss, terms, method_log_probs = method.compute(out, y, relative_costs)
            gates = method.confidence_gates(out)
            cost = method.expected_cost(out, relative_costs)
        n = y.shape[0]
        images += n
        loss_sum += loss.double() * n
        if "objective" in terms:
            objective_sum = terms["objective"].double() * n + (0 if objective_sum is None else objective_sum)
        hits = torch.stack([(f.argmax(dim=1) == y).sum() for f in out.logits])
        correct = hits if correct is None else correct + hits
        correct_method += (method_log_probs.argmax(dim=1) == y).sum()
        if gates:
            sums = torch.stack([g.double().sum() for g in gates])
            gate_sums = sums if gate_sums is None else gate_sums + sums
            if method.soft_output:
                routes = routing_mass(gates).sum(dim=1)
                route_sums = routes if route_sums is None else route_sums + routes
        cost_sum += cost.double().sum() if cost.dim() else cost.double() * n
    if images == 0:
        raise ReproError("the evaluation split is empty; use a larger --subset or --val-fraction")
    stats = {"loss": float(loss_sum) / images}
    if objective_sum is not None:
        stats["objective"] = float(objective_sum) / images
    stats.update({f"acc_exit{b}": int(c) / images for b, c in enumerate(correct.tolist())})
    stats["acc_method"] = int(correct_method) / images
    if gate_sums is not None:
        stats.update({f"gate_mean_exit{b}": float(s) / images for b, s in enumerate(gate_sums.tolist())})
    if route_sums is not None:
        stats.update({f"route_exit{b}": float(s) / images for b, s in enumerate(route_sums.tolist())})
    stats["cost_vs_final"] = float(cost_sum) / images
    return stats


# ---------------------------------------------------------------------------------------------- whole runs


@dataclass
class FitResult:
    run: rundir.RunDir
    config: TrainConfig
    state: TrainingState  # counters after the last epoch (model and optimizer left out)
    already_finished: bool = False  # resume of a run that had nothing left to do

    @property
    def rows(self) -> list[dict]:  # metrics.csv
        return self.state.rows

    @property
    def epochs_done(self) -> int:
        return self.state.epoch

    @property
    def selected_epoch(self) -> int:
        """The epoch checkpoint.pt holds: the lowest validation loss, or the last epoch with --select-last."""
        return self.state.selected_epoch

    @property
    def best_epoch(self) -> int:
        """The epoch with the lowest validation loss (what early stopping counts from)."""
        return self.state.best_epoch

    @property
    def stopped_early(self) -> bool:
        return self.state.stopped_early


class TrainingInterrupted(ReproError):
    """Ctrl-C or SIGTERM during training: the run is left resumable, and the message says how."""

    def __init__(self, run: rundir.RunDir, state: artifacts.RunState, signal_name: str):
        exit_code = 143 if signal_name == "SIGTERM" else 130
        super().__init__(f"{signal_name}: run {run.path} {state.describe()}; everything written so far is kept. "
                         f"Resume it with: repro train --resume {shlex.quote(str(run.path))}", exit_code)


def resume_config(path: Path, given: dict) -> tuple[rundir.RunDir, TrainConfig]:
    """The saved config of run `path`; refuses when an option given now differs from it, naming each.

    `given` maps option names to values (None = not given). data_dir may differ (data moves; its fingerprint
    is checked instead) and becomes the run's; precision `auto` stands for what it resolved to.
    """
    run = rundir.open_run(Path(path))
    saved = artifacts.read_config(run)
    differences = []
    for name, value in given.items():
        if value is None or name == "data_dir" or (name == "precision" and value == "auto"):
            continue
        current = getattr(saved, name)
        if isinstance(current, (list, tuple)):
            value = type(current)(value)
        if current != value:
            differences.append(f"--{name.replace('_', '-')} {value!r} (the run has {current!r})")
    if differences:
        raise ReproError(f"cannot resume {run.path} with different options: {'; '.join(differences)}; "
                         "drop them, or start a new run")
    if given.get("data_dir"):
        saved = replace(saved, data_dir=str(given["data_dir"]))
    return run, saved


@dataclass
class Training:
    """Everything one run trains with, built from its config by `prepare`."""

    config: TrainConfig  # resolved: precision, exits and the data set's shape filled in
    dataset: object  # repro.data.ImageDataset
    model: torch.nn.Module
    method: object  # repro.methods.Method
    optimizer: torch.optim.Optimizer
    train_loader: object  # repro.data.DeviceLoader
    val_loader: object
    relative_costs: torch.Tensor  # [E] cumulative cost of each exit over the final exit's
    accelerator: Accelerator
    images_per_epoch: int

    def lr_at(self, step: int) -> float:
        return learning_rate(self.config, step, self.total_steps, self.steps_per_epoch)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


def prepare(config: TrainConfig, device: torch.device) -> Training:
    """Load the data and build model, method, optimizer and loaders for `config` on `device`.

    The order fixes the initial weights: they depend on the seed alone (torch.manual_seed right before the
    model is built), so a resumed or repeated run starts from the same ones.
    """
    from repro.data import DeviceLoader
    from repro.methods import get_method
    from repro.rebuild import build_model, load_data

    # Method options spelled out (None -> the method's default), so config.json records the loss trained.
    config = replace(config.resolved(), precision=resolve_precision(config.precision, device))
    accelerator = Accelerator.for_device(device, config.precision)
    dataset, splits = load_data(config)
    config = config.with_dataset(dataset)
    torch.manual_seed(config.seed)  # initial weights depend on the seed only
    model = build_model(config, dataset)
    config = replace(config, exits=list(model.exit_positions))
    method = get_method(config.method, **config.method_options())
    relative_costs = model.costs.relative().to(device)
    model.to(device)
    if accelerator.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model, device)
    train_images, train_labels = splits["train"]
    drop_last = len(train_labels) % config.batch_size == 1  # a batch of one breaks batch norm
    common = dict(device=device, mean=dataset.mean, std=dataset.std)
    train_loader = DeviceLoader(train_images, train_labels, config.batch_size, shuffle=True, seed=config.seed,
                                crop=config.augment, flip=config.augment, drop_last=drop_last, **common)
    val_loader = DeviceLoader(*splits["val"], max(config.batch_size, 256), **common)
    images = len(train_loader) * config.batch_size if drop_last else len(train_labels)
    return Training(config, dataset, model, method, optimizer, train_loader, val_loader, relative_costs, accelerator, images)


def fit(
    config: TrainConfig,
    path: Path,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
    compile: bool = False,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train `config` into the run directory `path`, writing metrics.csv, train.log, state.json,
    checkpoint.pt (best, or last, weights) and last.pt after every epoch, atomically.

    stop_after: stop once this many epochs are done, as an interruption would (the run stays resumable;
    the schedule is still the whole run's), which is how `repro verify` retrains a run's first epochs.

    resume=False: a new run; the data set is loaded and the model built (so a bad config fails) before the
    directory is created, which refuses an existing one unless `overwrite`. resume=True: continue the run
    in `path` from its last.pt (from scratch when the first epoch never finished); `config` is the run's
    own (see `resume_config`). A finished run is left alone (FitResult.already_finished).
    """
    from repro.environment import environment

    device = torch.device(device)
    path = Path(path)
    run, start = None, TrainingState()
    if resume:
        run = rundir.open_run(path)
        run_state = artifacts.read_state(run)
        if run_state.finished:
            return FitResult(run, config, _finished_state(run, run_state, config), already_finished=True)
        if run_state.trained_here_now():
            raise ReproError(f"run {run.path} is being trained by process {run_state.pid} on this machine; "
                             "stop that process first (a second one would write the same files)")
        if run.has(rundir.LAST):
            start = artifacts.read_training_state(run)

    training = prepare(config, device)
    config = training.config
    # Everything read and checked before anything is written: a refused resume leaves the run as it was.
    if start.model is not None:
        try:
            training.model.load_state_dict(start.model)
            training.optimizer.load_state_dict(start.optimizer)
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            from repro.errors import error_reason

            raise artifacts.DamagedFile(rundir.RunDir(path), rundir.LAST, f"it does not fit the model or optimizer its "
                                        f"config describes ({error_reason(error)})", artifacts.fix_command(rundir.RunDir(path), rundir.LAST)) from None
    if run is None:
        run = rundir.create_run_dir(path, overwrite=overwrite)
    env = _environment_record(run, environment(device, training.dataset.name, training.dataset.fingerprint, config.seed,
                                               config.precision), resumed=resume)
    artifacts.write_config(run, config)
    artifacts.write_env(run, env)
    rundir.append_log(run, f"resumed after epoch {start.epoch}" if start.model is not None else f"config {config.to_dict()}")
    start = replace(start, model=None, optimizer=None)
    with _stop_signals() as stop:
        stop.epochs_done = start.epoch
        try:
            state = run_epochs(training, run, start, compile, progress, stop, stop_after)
        except KeyboardInterrupt:
            current = artifacts.read_state(run)
            if current.finished:  # the signal came while the last epoch's files were written: the run is done
                return FitResult(run, config, _finished_state(run, current, config))
            interrupted = artifacts.new_state("interrupted", stop.epochs_done, config.epochs)
            artifacts.write_state(run, interrupted)
            rundir.append_log(run, f"interrupted ({stop.signal_name}) during epoch {interrupted.epoch + 1}")
            raise TrainingInterrupted(run, interrupted, stop.signal_name) from None
        except Exception as error:
            from repro.errors import error_reason

            reason = str(error) if isinstance(error, ReproError) else f"{type(error).__name__}: {error_reason(error)}"
            artifacts.write_state(run, artifacts.new_state("failed", stop.epochs_done, config.epochs, error=reason))
            raise
    return FitResult(run, config, state)


def run_epochs(training: Training, run: rundir.RunDir, state: TrainingState, compile: bool = False,
               progress: Progress | None = None, stop=None, stop_after: int | None = None) -> TrainingState:
    """Train from `state` (epochs done, early-stopping counters) to the end of the run (or to `stop_after`
    epochs); returns the final state."""
    config, model = training.config, training.model
    runner = torch.compile(model) if compile else model
    stop = stop or _StopSignals()
    artifacts.write_state(run, artifacts.new_state("running", state.epoch, config.epochs))
    for epoch in range(state.epoch, min(config.epochs, stop_after or config.epochs)):
        torch.manual_seed(epoch_seed(config.seed, epoch))
        training.train_loader.set_epoch(epoch)
        method = training.method.for_epoch(epoch)
        if epoch > 0 and training.method.loss_phase(epoch) != training.method.loss_phase(epoch - 1):
            # A warm-up ended: the validation loss now measures another loss, so early stopping and the
            # checkpoint selection start afresh from this epoch.
            state = replace(state, best_val_loss=math.inf, bad_epochs=0)
            rundir.append_log(run, f"epoch {epoch + 1}: the warm-up is over; training the method's own loss from here")
        if progress is not None:
            progress.start_epoch(epoch + 1, config.epochs, training.images_per_epoch)
        try:
            train = train_one_epoch(runner, method, training.train_loader, training.optimizer, training.relative_costs,
                                    training.lr_at, epoch * training.steps_per_epoch, training.accelerator, progress)
        except NonFiniteLoss as error:
            rundir.append_log(run, f"epoch {epoch + 1}: stopped: {error}")
            raise
        val = validate(runner, method, training.val_loader, training.relative_costs, training.accelerator)
        bad = next((name for name in ("loss", watched(config)) if not math.isfinite(val[name])), None)
        if bad is not None:
            message = f"the validation {bad} became {val[bad]} in epoch {epoch + 1}; stopping (the last good checkpoint is kept)"
            rundir.append_log(run, message)
            raise ReproError(message)
        state = _next_state(state, config, epoch + 1, val[watched(config)])
        if state.stopped_early and training.method.loss_phase(epoch) != training.method.loss_phase(config.epochs - 1):
            state.stopped_early, state.finished = False, False  # never stop during a warm-up
        last_step = min((epoch + 1) * training.steps_per_epoch, training.total_steps) - 1
        row = _metrics_row(epoch + 1, train, val, model.costs, training.lr_at(last_step))
        state.rows = [*state.rows, row]
        improved = state.best_epoch == epoch + 1
        with stop.deferred():  # a signal now waits until every file of this epoch is written
            if state.selected_epoch == epoch + 1:
                artifacts.write_checkpoint(run, artifacts.Checkpoint(_cpu_state(model), config.to_dict(), epoch + 1, val["loss"]))
            artifacts.write_metrics(run, state.rows)
            rundir.append_log(run, _log_line(row, improved))
            artifacts.write_training_state(run, replace(state, model=_cpu_state(model), optimizer=training.optimizer.state_dict()))
            status = "finished" if state.finished else "running"
            artifacts.write_state(run, artifacts.new_state(status, epoch + 1, config.epochs, state.stopped_early))
            stop.epochs_done = epoch + 1
        if progress is not None:
            progress.end_epoch(row)
        if state.finished:
            break
    if not state.finished:  # stopped after `stop_after` epochs: resumable, like an interrupted run
        artifacts.write_state(run, artifacts.new_state("interrupted", state.epoch, config.epochs))
        rundir.append_log(run, f"stopped after epoch {state.epoch} as asked; resume with `repro train --resume {run.path}`")
        return state
    # Finished (also when a resume found last.pt already at the end: a process killed between writing it and
    # state.json): say so before last.pt goes, so a finished run is never mistaken for one to restart.
    artifacts.write_state(run, artifacts.new_state("finished", state.epoch, config.epochs, state.stopped_early))
    if state.stopped_early:
        rundir.append_log(run, f"early stop: no lower validation {watched(config)} for {config.patience} epochs; best epoch {state.best_epoch}")
    rundir.append_log(run, f"finished: checkpoint.pt holds epoch {state.selected_epoch} (val {watched(config)} {state.selected_val_loss:.4f})")
    # Nothing resumes a finished run: drop the training state (model + optimizer, ~3x the checkpoint).
    run.file(rundir.LAST).unlink(missing_ok=True)
    return state


def watched(config: TrainConfig) -> str:
    """The validation quantity early stopping and the checkpoint selection watch: "loss", or "objective" for a
    soft-output method asked to (its metrics.csv column val_objective)."""
    return "objective" if config.stop_on == "objective" else "loss"


def _next_state(state: TrainingState, config: TrainConfig, epoch: int, val_loss: float) -> TrainingState:
    """Early-stopping and selection counters after `epoch` (1-based) with validation loss `val_loss` (the
    quantity `watched(config)` names; the TrainingState fields keep the name "val_loss" for either)."""
    state = replace(state, epoch=epoch)
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
    else:
        state.bad_epochs += 1
    if state.best_epoch == epoch or not config.select_best:
        state.selected_epoch, state.selected_val_loss = epoch, val_loss
    state.stopped_early = config.patience > 0 and state.bad_epochs >= config.patience and epoch < config.epochs
    state.finished = state.stopped_early or epoch == config.epochs
    return state


def _finished_state(run: rundir.RunDir, run_state: artifacts.RunState, config: TrainConfig) -> TrainingState:
    """The counters of a finished run, from its metrics.csv and checkpoint (its last.pt is gone): the best
    epoch among those of the last loss phase (a warm-up's losses measure another loss, as in run_epochs),
    each epoch by its own row's number, and the watched quantity of the epoch checkpoint.pt holds."""
    rows = artifacts.read_metrics(run) if run.has(rundir.METRICS) else []
    checkpoint = artifacts.read_checkpoint(run) if run.has(rundir.CHECKPOINT) else None
    from repro.methods import get_method

    column = f"val_{watched(config)}"
    method = get_method(config.method, **config.method_options())
    last_phase = method.loss_phase(config.epochs - 1)
    watched_at = {int(row["epoch"]): row[column] for row in rows
                  if isinstance(row.get(column), float) and isinstance(row.get("epoch"), (int, float))}
    candidates = {epoch: value for epoch, value in watched_at.items() if method.loss_phase(epoch - 1) == last_phase}
    best = min(candidates, key=lambda epoch: (candidates[epoch], epoch), default=0)
    selected = checkpoint.epoch if checkpoint else 0
    return TrainingState(epoch=run_state.epoch, best_val_loss=candidates.get(best, math.inf), best_epoch=best,
                         selected_epoch=selected, selected_val_loss=watched_at.get(selected, math.inf),
                         rows=rows, finished=True, stopped_early=run_state.stopped_early)


class _StopSignals:
    """SIGTERM handled like Ctrl-C (a KeyboardInterrupt in the main thread), with `deferred()` sections in
    which a signal waits until the section ends, so the files of a finished epoch are all written."""

    def __init__(self):
        self.signal_name = "interrupted"
        self.epochs_done = 0  # what the files on disk hold (the epoch in progress when a signal comes does not count)
        self._deferring = False
        self._pending = False

    def handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        if self._deferring:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_signals():
    """Install `_StopSignals` for SIGINT and SIGTERM while training (main thread only: signal handlers can
    only be set there; elsewhere, e.g. in a worker thread, the defaults stay)."""
    stop = _StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, stop.handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cpu_state(model: torch.nn.Module) -> dict:
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}


def _environment_record(run: rundir.RunDir, env: dict, resumed: bool) -> dict:
    """env.json's new content: this environment, or, on resume, the first one with this one appended to its
    `resumed` list, refused when the data set's fingerprint changed."""
    if resumed and run.has(rundir.ENV):
        first = artifacts.read_env(run)
        if first.get("dataset_fingerprint") != env["dataset_fingerprint"]:
            raise ReproError(f"the data set's fingerprint changed since run {run.path} started "
                             f"({first.get('dataset_fingerprint')} -> {env['dataset_fingerprint']}); refusing to resume on other data")
        first.setdefault("resumed", []).append(env)
        return first
    return env


def _metrics_row(epoch: int, train: dict, val: dict, costs, lr: float) -> dict:
    """One metrics.csv row in the contract's column order; gate columns empty when there are no gates.

    Two cost figures with two denominators, named apart: cost_vs_final is the expected cost the regulariser
    sees (MACs over the final exit's, every branch on the way included: 427 MMACs for VGG-13 with nine
    exits), macs_vs_plain the same expected MACs over the plain network's (247 MMACs), the denominator of
    every speed-up and of `repro sweep --budget`."""
    num_exits = costs.num_exits
    row = {"epoch": epoch, "train_loss": train["loss"]}
    row.update({f"train_{name}": value for name, value in train.items()
                if name not in ("loss", "images", "seconds") and not name.startswith("grad_exit")})
    row["val_loss"] = val["loss"]
    if "objective" in val:
        row["val_objective"] = val["objective"]
    row.update({f"val_acc_exit{b}": val[f"acc_exit{b}"] for b in range(num_exits)})
    row["val_acc_method"] = val["acc_method"]
    row.update({f"gate_mean_exit{b}": val.get(f"gate_mean_exit{b}", "") for b in range(num_exits - 1)})
    # Soft-output methods only (empty otherwise): where the soft output routes validation samples, and the
    # gradient each exit's classifier received in training (repro.methods.routing_mass; train_one_epoch).
    if any(key.startswith("route_exit") for key in val):
        row.update({f"route_exit{b}": val[f"route_exit{b}"] for b in range(num_exits)})
        row.update({f"grad_exit{b}": train.get(f"grad_exit{b}", "") for b in range(num_exits)})
    row["cost_vs_final"] = val["cost_vs_final"]
    row["macs_vs_plain"] = val["cost_vs_final"] * costs.cumulative_macs[-1] / costs.plain_macs
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
    gates = " ".join(f"{row[k]:.2f}" for k in row if k.startswith("gate_mean_exit") and row[k] not in (None, ""))
    routes = " ".join(f"{row[k]:.2f}" for k in row if k.startswith("route_exit") and row[k] not in (None, ""))
    grads = " ".join(f"{row[k]:.2g}" for k in row if k.startswith("grad_exit") and row[k] not in (None, ""))
    objective = row.get("val_objective")
    return (
        f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}{'  ' + terms if terms else ''}  "
        f"val loss {row['val_loss']:.4f}{f'  val objective {objective:.4f}' if isinstance(objective, float) else ''}  val acc {100 * row['val_acc_method']:.2f}%  exits [{exits}]"
        f"{f'  gates [{gates}]' if gates else ''}{f'  route [{routes}]' if routes else ''}"
        f"{f'  grad [{grads}]' if grads else ''}  cost {row['cost_vs_final']:.3f}x final = {row['macs_vs_plain']:.3f}x plain  "
        f"lr {row['lr']:.3g}  {row['images_per_second']:,.0f} img/s"
    )


def _log_line(row: dict, improved: bool) -> str:
    return f"{describe_epoch(row)}{'  (best so far)' if improved else ''}  {row['seconds']:.1f} s"
