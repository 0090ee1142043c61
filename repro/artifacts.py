"""Every file of a run directory, defined once: its schema, how it is written, how it is read back
(validated), and whether it still belongs to the run's checkpoint.

repro.rundir gives the low-level pieces (paths, atomic writes, finding runs); this module is the only one
that knows what each file holds. The trainer, `repro eval`, `repro sweep`, the report and the grid all read
and write results through it, so a file's layout lives in one place (STYLE.md, principle 7).

Reading validates: a file of the wrong structure, with missing keys, wrong types or shapes, or NaN where
a number belongs, is a ReproError that names the file and what is wrong (one line, never a traceback), and
nothing is overwritten by the read. Results computed from a checkpoint (outputs.pt, eval.json,
timing.json, sweep.csv, calibration.json) record its SHA-256; `stale_reason` says when one belongs to
another checkpoint than the run's checkpoint.pt, so a report never mixes an older result into a newer run.

The files:
    config.json       the resolved TrainConfig (enough to rebuild the run)
    env.json          where it ran: versions, device, git commit, data fingerprint, seed, precision
    state.json        running | finished | interrupted | failed, the epoch reached, the error (RunState)
    metrics.csv       one row per epoch (repro.trainer)
    train.log         the human-readable log (append-only)
    checkpoint.pt     the selected weights (Checkpoint)
    last.pt           everything resuming needs after the last finished epoch (TrainingState); deleted
                      once the run has finished, since nothing resumes a finished run
    outputs.pt        every exit's logits and gates on val and test (StoredOutputs)
    eval.json         per-exit accuracy, costs and the default operating point
    timing.json       measured latencies and speed-ups
    sweep.csv         the threshold sweep, with sweep.source.json naming the checkpoint swept
    calibration.json  thresholds chosen on validation for a target
    exit_policies.json  exit decisions fitted on half of validation (repro.exit_policy)
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
from dataclasses import asdict, dataclass, field, fields

import torch

from repro import rundir
from repro.errors import ReproError
from repro.rundir import (
    CALIBRATION,
    CHECKPOINT,
    CONFIG,
    ENV,
    EVAL,
    EXIT_POLICIES,
    LAST,
    METRICS,
    OUTPUTS,
    STATE,
    SWEEP,
    SWEEP_SOURCE,
    TIMING,
    RunDir,
)

SPLITS = ("val", "test")
# The files that describe results and stay small: what is committed when results are (never *.pt).
SMALL_FILES = (CONFIG, ENV, STATE, METRICS, rundir.LOG, EVAL, TIMING, SWEEP, SWEEP_SOURCE, CALIBRATION, EXIT_POLICIES)


class DamagedFile(ReproError):
    """A run file that exists but cannot be used: its path and what is wrong, in one line."""

    def __init__(self, run: RunDir, name: str, problem: str, fix: str | None = None):
        self.run, self.name, self.problem = run, name, problem
        super().__init__(f"{run.file(name)} is damaged: {problem}{'; ' + fix if fix else ''}")


class StaleResult(ReproError):
    """A result file computed from another checkpoint than the run's checkpoint.pt."""


class OutdatedResult(ReproError):
    """A result file an older repro wrote with a definition that has since changed: measured again, not read."""


# ---------------------------------------------------------------------------------------------- schemas

# A schema is a type (float: a finite number; int; str; bool; dict or list: any object or list), a list
# [spec] of one element spec, a dict {key: spec} of required keys (others allowed; a key whose spec admits
# None may be absent), or a tuple of alternatives such as (float, None).


def schema_problem(value, spec, where: str = "") -> str | None:
    """What is wrong with `value` against `spec` ("test.exit_accuracy[2] is NaN or missing"), else None."""
    label = where or "the file"
    if isinstance(spec, tuple):
        problems = [schema_problem(value, option, where) for option in spec]
        return None if any(p is None for p in problems) else problems[0]
    if spec is None:
        return None if value is None else f"{label} should be null"
    if spec is float:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{label} is NaN or missing"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{label} should be a finite number, not {value!r}"
        return None
    if spec is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"{label} should be an integer, not {value!r}"
    if spec in (dict, list):
        return None if isinstance(value, spec) else f"{label} should be {'an object' if spec is dict else 'a list'}, not {type(value).__name__}"
    if spec in (str, bool):
        return None if isinstance(value, spec) else f"{label} should be {'a string' if spec is str else 'true or false'}, not {value!r}"
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{label} should be a list, not {type(value).__name__}"
        for index, item in enumerate(value):
            problem = schema_problem(item, spec[0], f"{where}[{index}]")
            if problem:
                return problem
        return None
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{label} should be an object, not {type(value).__name__}"
        for key, item_spec in spec.items():
            inner = f"{where}.{key}" if where else key
            if key not in value:
                if isinstance(item_spec, tuple) and None in item_spec:
                    continue  # optional key
                return f"{inner} is missing"
            problem = schema_problem(value[key], item_spec, inner)
            if problem:
                return problem
        return None
    raise TypeError(f"bad schema {spec!r}")


def _read_json_checked(run: RunDir, name: str, spec, fix: str):
    data = _read_json(run, name, fix)
    problem = schema_problem(data, spec)
    if problem:
        raise DamagedFile(run, name, problem, fix)
    return data


def _read_json(run: RunDir, name: str, fix: str):
    path = run.file(name)
    if not path.is_file():
        raise ReproError(f"run {run.path} has no {name}; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFile(run, name, f"it is not valid JSON ({error})", fix) from None


def fix_command(run: RunDir, name: str) -> str:
    """What recreates file `name` of `run`, as advice in an error message."""
    path = run.path
    return {
        CONFIG: "start a new run with `repro train`",
        ENV: f"resume it with `repro train --resume {path}`",
        STATE: f"resume it with `repro train --resume {path}`",
        METRICS: f"resume it with `repro train --resume {path}`",
        CHECKPOINT: f"train it with `repro train --resume {path}`",
        LAST: f"start it again with `repro train --overwrite --run-dir {path}`",
        OUTPUTS: f"recompute it with `repro eval {path}`",
        EVAL: f"recompute it with `repro eval {path}`",
        TIMING: f"measure it again with `repro eval {path} --timing`",
        SWEEP: f"recompute it with `repro sweep {path}`",
        SWEEP_SOURCE: f"recompute it with `repro sweep {path}`",
        CALIBRATION: f"recompute it with `repro sweep {path} --max-drop 1`",
        EXIT_POLICIES: f"fit them again with `repro fit-gates {path}`",
    }[name]


# ---------------------------------------------------------------------------------------------- config.json, env.json


def read_config(run: RunDir):
    """The run's TrainConfig; config.json is the source of truth for what the run is."""
    from repro.config import TrainConfig

    data = _read_json(run, CONFIG, fix_command(run, CONFIG))
    try:
        return TrainConfig.from_dict(data, source=str(run.file(CONFIG)))
    except ReproError as error:
        raise DamagedFile(run, CONFIG, str(error).replace(f"{run.file(CONFIG)}: ", ""), "it was edited by hand or by another version of repro") from None


def write_config(run: RunDir, config) -> None:
    rundir.write_json(run.file(CONFIG), config.to_dict())


ENV_SCHEMA = {"python": str, "torch": str, "device": str, "dataset_fingerprint": str, "seed": int}


def read_env(run: RunDir) -> dict:
    return _read_json_checked(run, ENV, ENV_SCHEMA, fix_command(run, ENV))


def write_env(run: RunDir, env: dict) -> None:
    rundir.write_json(run.file(ENV), env)


# ---------------------------------------------------------------------------------------------- state.json


RUN_STATUSES = ("running", "finished", "interrupted", "failed")


@dataclass
class RunState:
    """Where a run stands, written atomically at every change so that the report, resume and the grid can
    tell a finished run from an unfinished one. A run killed without warning (kill -9, power loss) stays
    "running" in the file; `current_status` tells it apart by its process being gone."""

    status: str  # running | finished | interrupted | failed
    epoch: int  # epochs completed
    epochs: int  # epochs planned (config.epochs)
    stopped_early: bool = False
    error: str | None = None  # failed: the one-line error
    pid: int | None = None  # running: the training process and its host
    host: str | None = None
    updated: str = ""  # UTC, ISO 8601

    def describe(self) -> str:
        """'finished (12 of 30 epochs, stopped early)', 'interrupted at epoch 3/30', 'failed at epoch 2/30: ...'."""
        status = self.current_status()
        if status == "finished":
            return f"finished ({self.epoch} of {self.epochs} epochs{', stopped early' if self.stopped_early else ''})"
        if status == "failed":
            return f"failed at epoch {self.epoch}/{self.epochs}: {self.error}"
        if status == "running":
            return f"running (epoch {self.epoch}/{self.epochs} done)"
        return f"interrupted at epoch {self.epoch}/{self.epochs}"

    def trained_here_now(self) -> bool:
        """Whether another live process on this machine is training the run right now."""
        return (self.status == "running" and self.host == socket.gethostname() and self.pid is not None
                and self.pid != os.getpid() and process_alive(self.pid))

    def current_status(self) -> str:
        """The status, with a "running" run whose process is gone (on this host) read as interrupted."""
        if self.status == "running" and self.host == socket.gethostname() and self.pid is not None and not process_alive(self.pid):
            return "interrupted"
        return self.status

    @property
    def finished(self) -> bool:
        return self.status == "finished"


STATE_SCHEMA = {"status": str, "epoch": int, "epochs": int, "stopped_early": bool, "error": (str, None),
                "pid": (int, None), "host": (str, None)}


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (one of another user counts: it runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_state(status: str, epoch: int, epochs: int, stopped_early: bool = False, error: str | None = None) -> RunState:
    running = status == "running"
    return RunState(status, epoch, epochs, stopped_early, error, os.getpid() if running else None,
                    socket.gethostname() if running else None,
                    datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def write_state(run: RunDir, state: RunState) -> None:
    rundir.write_json(run.file(STATE), asdict(state))


def read_state(run: RunDir) -> RunState:
    """state.json, or for a run written before it existed, what its last.pt and metrics.csv say."""
    if not run.has(STATE):
        return _legacy_state(run)
    data = _read_json_checked(run, STATE, STATE_SCHEMA, f"resume it with `repro train --resume {run.path}`")
    if data["status"] not in RUN_STATUSES:
        raise DamagedFile(run, STATE, f"status {data['status']!r} is not one of {', '.join(RUN_STATUSES)}")
    if not 0 <= data["epoch"] <= data["epochs"]:
        raise DamagedFile(run, STATE, f"epoch {data['epoch']} is not between 0 and epochs ({data['epochs']})")
    known = {f.name for f in fields(RunState)}
    return RunState(**{k: v for k, v in data.items() if k in known})


def _legacy_state(run: RunDir) -> RunState:
    config = read_config(run)
    if run.has(LAST):
        last = read_training_state(run)
        status = "finished" if last.finished else "interrupted"
        return RunState(status, last.epoch, config.epochs, last.stopped_early)
    rows = read_metrics(run) if run.has(METRICS) else []
    return RunState("interrupted", len(rows), config.epochs)


# ---------------------------------------------------------------------------------------------- metrics.csv


REQUIRED_METRICS = ("epoch", "train_loss", "val_loss", "val_acc_method")


def write_metrics(run: RunDir, rows: list[dict]) -> None:
    rundir.write_csv(run.file(METRICS), rows)


def read_metrics(run: RunDir) -> list[dict]:
    """metrics.csv as rows of floats (empty cells None; `epoch` an int), checked: the required columns, a
    number in every other cell, epochs 1, 2, 3, ... in order."""
    fix = fix_command(run, METRICS)
    path = run.file(METRICS)
    if not path.is_file():
        raise ReproError(f"run {run.path} has no {METRICS}; {fix}")
    try:
        raw = rundir.read_csv(path)
    except (UnicodeDecodeError, ValueError) as error:
        raise DamagedFile(run, METRICS, f"not a readable CSV file ({error})", fix) from None
    if not raw:
        return []
    lacking = [c for c in REQUIRED_METRICS if c not in raw[0]]
    if lacking:
        raise DamagedFile(run, METRICS, f"it lacks the column(s) {', '.join(lacking)}", fix)
    rows = []
    for number, row in enumerate(raw, start=1):
        parsed = {}
        for key, text in row.items():
            if key is None or text is None:
                raise DamagedFile(run, METRICS, f"row {number} has a different number of cells than the header", fix)
            if text == "":
                parsed[key] = None
                continue
            try:
                parsed[key] = float(text)
            except ValueError:
                raise DamagedFile(run, METRICS, f"row {number}, column {key}: {text!r} is not a number", fix) from None
            if math.isnan(parsed[key]) and key in REQUIRED_METRICS:
                raise DamagedFile(run, METRICS, f"row {number}, column {key} is NaN", fix)
        if parsed["epoch"] != number:
            raise DamagedFile(run, METRICS, f"row {number} is epoch {row['epoch']}, expected {number}", fix)
        parsed["epoch"] = number
        rows.append(parsed)
    return rows


# ---------------------------------------------------------------------------------------------- checkpoints


def _load_torch(run: RunDir, name: str, fix: str):
    path = run.file(name)
    if not path.is_file():
        raise ReproError(f"run {run.path} has no {name}; {fix}")
    try:
        return rundir.load_torch(path, f"{name} of run {run.path}")
    except ReproError as error:
        raise DamagedFile(run, name, str(error).split(" (", 1)[-1].rstrip(")") if " (" in str(error) else str(error), fix) from None


def _state_dict_problem(value) -> str | None:
    if not isinstance(value, dict) or not value:
        return "its weights are not a state dict"
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            return f"weight {key!r} is not a tensor"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"weight {key} holds NaN or infinite values"
    return None


@dataclass
class Checkpoint:
    """checkpoint.pt: the selected weights (float32, on the CPU) and the config they were trained with."""

    model: dict  # state dict
    config: dict  # TrainConfig.to_dict()
    epoch: int  # the epoch they were saved after (1-based)
    val_loss: float  # their validation loss


def write_checkpoint(run: RunDir, checkpoint: Checkpoint) -> None:
    rundir.save_torch(run.file(CHECKPOINT), asdict(checkpoint))


def read_checkpoint(run: RunDir) -> Checkpoint:
    fix = fix_command(run, CHECKPOINT)
    data = _load_torch(run, CHECKPOINT, fix)
    if not isinstance(data, dict) or not {"model", "config", "epoch", "val_loss"} <= set(data):
        raise DamagedFile(run, CHECKPOINT, "it is not a repro checkpoint (no model, config, epoch and val_loss)", fix)
    problem = _state_dict_problem(data["model"]) or schema_problem(
        {"config": data["config"], "epoch": data["epoch"], "val_loss": data["val_loss"]},
        {"config": dict, "epoch": int, "val_loss": float},
    )
    if problem:
        raise DamagedFile(run, CHECKPOINT, problem, fix)
    return Checkpoint(data["model"], data["config"], int(data["epoch"]), float(data["val_loss"]))


def checkpoint_sha256(run: RunDir) -> str | None:
    """SHA-256 of the run's checkpoint.pt, or None when it has none."""
    return rundir.file_sha256(run.file(CHECKPOINT)) if run.has(CHECKPOINT) else None


@dataclass
class TrainingState:
    """last.pt: the state after the last finished epoch, everything resuming needs (repro.trainer).

    All randomness of an epoch derives from (seed, epoch) and the learning rate from the step, so weights,
    optimizer state and these counters are the whole state: a resumed run equals an uninterrupted one.
    """

    epoch: int = 0  # epochs completed
    best_val_loss: float = math.inf  # the lowest validation loss so far (early stopping)
    best_epoch: int = 0  # the epoch that reached it
    bad_epochs: int = 0  # epochs since then without a lower validation loss
    selected_epoch: int = 0  # the epoch checkpoint.pt holds: the best, or the last with --select-last
    selected_val_loss: float = math.inf
    rows: list[dict] = field(default_factory=list)  # metrics.csv so far
    finished: bool = False
    stopped_early: bool = False
    model: dict | None = None  # weights after `epoch`
    optimizer: dict | None = None  # optimizer state after `epoch`


TRAINING_STATE_SCHEMA = {"epoch": int, "best_val_loss": (float, int), "best_epoch": int, "bad_epochs": int,
                         "selected_epoch": int, "selected_val_loss": (float, int), "rows": [dict],
                         "finished": bool, "stopped_early": bool, "optimizer": dict}


def write_training_state(run: RunDir, state: TrainingState) -> None:
    rundir.save_torch(run.file(LAST), asdict(state))


def read_training_state(run: RunDir) -> TrainingState:
    fix = fix_command(run, LAST)
    data = _load_torch(run, LAST, fix)
    if not isinstance(data, dict):
        raise DamagedFile(run, LAST, "it is not a repro training state", fix)
    # math.inf is a legal best loss before the first epoch; the schema's float excludes it, so check apart.
    checked = {k: (0.0 if k in ("best_val_loss", "selected_val_loss") and data.get(k) == math.inf else v) for k, v in data.items()}
    problem = schema_problem(checked, TRAINING_STATE_SCHEMA) or _state_dict_problem(data.get("model"))
    if problem:
        raise DamagedFile(run, LAST, problem, fix)
    known = {f.name for f in fields(TrainingState)}
    return TrainingState(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------------------- outputs.pt


@dataclass(frozen=True)
class StoredOutputs:
    """outputs.pt in memory, plus the plain network's MACs from eval.json (None until known).

    outputs.pt holds exactly {"exit_macs": float64 [E], "checkpoint_sha256": str, "splits": {"val"|"test":
    {"logits": float [E, N, C], "gates": float [E-1, N] | None, "targets": int64 [N]}}}. Gates are stored
    only for methods whose exit criterion is the learned gate.
    """

    exit_macs: torch.Tensor  # float64 [E]: cumulative MACs of leaving at each exit
    checkpoint_sha256: str
    splits: dict  # split -> repro.sweep.SplitOutputs
    plain_macs: float | None = None

    @property
    def num_exits(self) -> int:
        return self.exit_macs.shape[0]

    def to_dict(self) -> dict:
        """The exact outputs.pt structure."""
        return {
            "exit_macs": self.exit_macs.clone(),
            "checkpoint_sha256": self.checkpoint_sha256,
            "splits": {
                name: {"logits": split.logits, "gates": split.gates, "targets": split.targets}
                for name, split in self.splits.items()
            },
        }


def outputs_problem(data) -> str | None:
    """What is wrong with a loaded outputs.pt structure (types, dtypes, shapes, finite values), else None."""
    if not isinstance(data, dict) or not {"exit_macs", "checkpoint_sha256", "splits"} <= set(data):
        return "it lacks exit_macs, checkpoint_sha256 or splits"
    exit_macs = data["exit_macs"]
    if not isinstance(exit_macs, torch.Tensor) or exit_macs.dim() != 1 or not exit_macs.is_floating_point():
        return "exit_macs is not a 1-d float tensor"
    if not isinstance(data["checkpoint_sha256"], str):
        return "checkpoint_sha256 is not a string"
    if not isinstance(data["splits"], dict):
        return "splits is not a dict"
    num_exits = exit_macs.numel()
    for name in SPLITS:
        raw = data["splits"].get(name)
        if not isinstance(raw, dict) or "logits" not in raw or "targets" not in raw:
            return f"it has no {name} split"
        logits, gates, targets = raw["logits"], raw.get("gates"), raw["targets"]
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            return f"{name} logits are not a float tensor"
        if logits.dim() != 3 or logits.shape[0] != num_exits:
            return f"{name} logits have shape {tuple(logits.shape)}, expected [{num_exits}, N, C]"
        if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
            return f"{name} targets are not an integer tensor"
        if targets.shape != (logits.shape[1],):
            return f"{name} targets have shape {tuple(targets.shape)} for {logits.shape[1]} samples"
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[2]):
            return f"{name} targets are outside 0..{logits.shape[2] - 1}"
        if gates is not None:
            if not isinstance(gates, torch.Tensor) or not gates.is_floating_point():
                return f"{name} gates are not a float tensor"
            if gates.shape != (num_exits - 1, logits.shape[1]):
                return f"{name} gates have shape {tuple(gates.shape)}, expected [{num_exits - 1}, {logits.shape[1]}]"
        if not torch.isfinite(logits).all() or (gates is not None and not torch.isfinite(gates).all()):
            return f"{name} outputs contain NaN or infinite values"
    return None


def outputs_from_dict(data, plain_macs: float | None = None) -> StoredOutputs:
    from repro.sweep import SplitOutputs

    splits = {
        name: SplitOutputs(raw["logits"], raw.get("gates"), raw["targets"].long())
        for name, raw in ((name, data["splits"][name]) for name in SPLITS)
    }
    return StoredOutputs(data["exit_macs"].double(), data["checkpoint_sha256"], splits, plain_macs)


def write_outputs(run: RunDir, outputs: StoredOutputs) -> None:
    rundir.save_torch(run.file(OUTPUTS), outputs.to_dict())


def read_outputs(run: RunDir) -> StoredOutputs:
    """outputs.pt of the run's current checkpoint.pt, with the plain network's MACs from eval.json (which
    must name the same checkpoint)."""
    fix = fix_command(run, OUTPUTS)
    data = _load_torch(run, OUTPUTS, fix)
    problem = outputs_problem(data)
    if problem:
        raise DamagedFile(run, OUTPUTS, problem, fix)
    current = checkpoint_sha256(run)
    if current is not None and current != data["checkpoint_sha256"]:
        raise StaleResult(f"{run.file(OUTPUTS)} was computed from another checkpoint than {run.file(CHECKPOINT)} "
                          f"(the run was retrained or resumed since); {fix}")
    # Only the plain network's MACs are needed from eval.json, which must come from the same checkpoint.
    evaluation = _read_json_checked(run, EVAL, {"checkpoint_sha256": str, "plain_macs": float}, fix_command(run, EVAL))
    if evaluation["checkpoint_sha256"] != data["checkpoint_sha256"]:
        raise StaleResult(f"{run.file(EVAL)} does not belong to {run.file(OUTPUTS)}; {fix}")
    return outputs_from_dict(data, float(evaluation["plain_macs"]))


# ---------------------------------------------------------------------------------------------- eval.json


POINT_SCHEMA = {"accuracy": float, "exit_fractions": [float], "mean_macs": float, "macs_speedup": float}
SPLIT_SUMMARY_SCHEMA = {"exit_accuracy": [float], "final_accuracy": float, "method_accuracy": float,
                        "mean_gate": ([float], None), "n": int}
EVAL_SCHEMA = {
    "checkpoint_sha256": (str, None), "num_exits": int, "exit_macs": [float], "plain_macs": float, "exit_params": [int],
    "val": SPLIT_SUMMARY_SCHEMA, "test": SPLIT_SUMMARY_SCHEMA,
    "operating_point": {"criterion": (str, None), "thresholds": [float], "how": str, "val": POINT_SCHEMA, "test": POINT_SCHEMA},
}


def write_eval(run: RunDir, summary: dict) -> None:
    rundir.write_json(run.file(EVAL), summary)


def read_eval(run: RunDir, check_current: bool = True) -> dict:
    summary = _read_result(run, EVAL, EVAL_SCHEMA, check_current)
    if len(summary["exit_macs"]) != summary["num_exits"] or len(summary["test"]["exit_accuracy"]) != summary["num_exits"]:
        raise DamagedFile(run, EVAL, f"num_exits is {summary['num_exits']} but the per-exit lists disagree", fix_command(run, EVAL))
    return summary


def _read_result(run: RunDir, name: str, schema: dict, check_current: bool) -> dict:
    """A JSON result file, validated against `schema`; with `check_current`, refused (StaleResult) when it
    was computed from another checkpoint than the run's checkpoint.pt."""
    data = _read_json_checked(run, name, schema, fix_command(run, name))
    if check_current:
        _check_current(run, name, data.get("checkpoint_sha256"))
    return data


def _check_current(run: RunDir, name: str, recorded: str | None) -> None:
    reason = stale_reason(run, recorded)
    if reason:
        raise StaleResult(f"{run.file(name)} {reason}; {fix_command(run, name)}")


def stale_reason(run: RunDir, recorded: str | None) -> str | None:
    """Why a result recording checkpoint `recorded` is not the run's current one (None: it is current, or
    the run has no checkpoint.pt to compare with, as in a committed results folder)."""
    current = checkpoint_sha256(run)
    if current is None or recorded == current:
        return None
    if recorded:
        return "was computed from another checkpoint than the run's checkpoint.pt"
    return "does not record the checkpoint it was computed from, so it cannot be checked against checkpoint.pt"


# ---------------------------------------------------------------------------------------------- timing.json


LATENCY_SCHEMA = {"mean_ms": float, "median_ms": float, "p95_ms": float}
# checkpoint_sha256 may be absent in files written by an older repro: `stale_reason` then says it cannot be
# checked against checkpoint.pt.
TIMING_SCHEMA = {
    "checkpoint_sha256": (str, None), "device": str, "n_images": int, "batch_size": int,
    "batch1": {path: LATENCY_SCHEMA for path in ("plain", "full", "early_exit")},
    "batched": {path: LATENCY_SCHEMA for path in ("plain", "full", "early_exit")},
    "measured_speedup": {"batch1": float, "batched": float},
    "macs_speedup": float, "early_exit_accuracy": float, "exit_fractions": [float],
}


def write_timing(run: RunDir, timing: dict) -> None:
    rundir.write_json(run.file(TIMING), timing)


def read_timing(run: RunDir, check_current: bool = True) -> dict:
    """timing.json, refused (a ReproError naming the fix) when an older repro wrote it: its batch-1 speed-up
    was a ratio of median latencies, which a mix of exits makes incomparable with the MAC speed-up, and it
    timed the first test images, which a data set stored class by class makes one class."""
    from repro.timing import BATCH1_STATISTIC, IMAGES

    data = _read_result(run, TIMING, TIMING_SCHEMA, check_current)
    if data.get("batch1_statistic") != BATCH1_STATISTIC or data.get("images") != IMAGES:
        raise OutdatedResult(f"{run.file(TIMING)} was written by an older repro (batch-1 latency as a median, or the first "
                             f"test images instead of a random sample); {fix_command(run, TIMING)}")
    return data


# ---------------------------------------------------------------------------------------------- sweep.csv


SWEEP_COLUMNS = ("split", "criterion", "threshold", "accuracy", "mean_macs", "macs_speedup", "exit_fractions", "pareto")


def write_sweep(run: RunDir, rows: list[dict], checkpoint_sha: str) -> None:
    """sweep.csv, then its sidecar naming the checkpoint swept and the csv's own SHA-256.

    In that order: a crash between the two leaves a sidecar that does not match the new csv, which reads
    as unknown origin (a rerun is asked for), never an old csv vouched for by a new sidecar. A hash, not the
    files' mtimes: re-running `repro eval` on the same checkpoint rewrites outputs.pt without making the
    sweep wrong, and copies of run folders need not keep mtimes.
    """
    rundir.write_csv(run.file(SWEEP), rows)
    source = {"checkpoint_sha256": checkpoint_sha, "sweep_sha256": rundir.file_sha256(run.file(SWEEP))}
    rundir.write_json(run.file(SWEEP_SOURCE), source)


def sweep_checkpoint(run: RunDir) -> str | None:
    """SHA-256 of the checkpoint the run's sweep.csv was computed from; None when that cannot be told (no
    sidecar: written by an older repro; an unreadable one; or one written for another sweep.csv)."""
    if not run.has(SWEEP) or not run.has(SWEEP_SOURCE):
        return None
    try:
        source = json.loads(run.file(SWEEP_SOURCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(source, dict) or source.get("sweep_sha256") != rundir.file_sha256(run.file(SWEEP)):
        return None
    recorded = source.get("checkpoint_sha256")
    return recorded if isinstance(recorded, str) else None


def read_sweep(run: RunDir, check_current: bool = True) -> list[dict]:
    """sweep.csv rows with numbers parsed: threshold (a number, or a list per early exit), accuracy,
    mean_macs, macs_speedup (floats), exit_fractions (list), pareto (bool); checked."""
    fix = fix_command(run, SWEEP)
    path = run.file(SWEEP)
    if not path.is_file():
        raise ReproError(f"run {run.path} has no {SWEEP}; {fix}")
    try:
        raw = rundir.read_csv(path)
    except (UnicodeDecodeError, ValueError) as error:
        raise DamagedFile(run, SWEEP, f"not a readable CSV file ({error})", fix) from None
    if raw and not set(SWEEP_COLUMNS) <= set(raw[0]):
        raise DamagedFile(run, SWEEP, f"it lacks the column(s) {', '.join(c for c in SWEEP_COLUMNS if c not in raw[0])}", fix)
    rows = []
    for number, row in enumerate(raw, start=1):
        try:
            parsed = {
                "split": row["split"],
                "criterion": row["criterion"],
                "threshold": json.loads(row["threshold"]),
                "accuracy": float(row["accuracy"]),
                "mean_macs": float(row["mean_macs"]),
                "macs_speedup": float(row["macs_speedup"]),
                "exit_fractions": json.loads(row["exit_fractions"]),
                "pareto": {"true": True, "false": False}[row["pareto"].strip().lower()],
            }
        except (TypeError, ValueError, KeyError, AttributeError):
            raise DamagedFile(run, SWEEP, f"row {number} does not parse", fix) from None
        problem = schema_problem(parsed, {"threshold": (float, [float]), "accuracy": float, "mean_macs": float,
                                          "macs_speedup": float, "exit_fractions": [float]}, f"row {number}")
        if problem or parsed["split"] not in SPLITS:
            raise DamagedFile(run, SWEEP, problem or f"row {number} has split {parsed['split']!r}", fix)
        rows.append(parsed)
    if check_current and checkpoint_sha256(run) is not None:
        recorded = sweep_checkpoint(run)
        _check_current(run, SWEEP, recorded)
    return rows


# ---------------------------------------------------------------------------------------------- calibration.json


CALIBRATION_SCHEMA = {"checkpoint_sha256": (str, None), "criterion": str, "target": dict, "thresholds": [float],
                      "val": POINT_SCHEMA, "test": POINT_SCHEMA}


def write_calibration(run: RunDir, calibration: dict) -> None:
    rundir.write_json(run.file(CALIBRATION), calibration)


def read_calibration(run: RunDir, check_current: bool = True) -> dict:
    return _read_result(run, CALIBRATION, CALIBRATION_SCHEMA, check_current)


# ---------------------------------------------------------------------------------------------- exit_policies.json


EXIT_POLICIES_SCHEMA = {"checkpoint_sha256": str, "policies": dict}


def write_exit_policies(run: RunDir, checkpoint_sha: str, policies: dict) -> None:
    """policies: {criterion name: FittedPolicy} (repro.exit_policy), replacing those of the same name."""
    try:
        known = read_exit_policies(run, checkpoint_sha)
    except DamagedFile:
        known = {}  # fitted from outputs.pt alone: nothing in a damaged file is lost that fit-gates cannot refit
    known.update(policies)
    rundir.write_json(run.file(EXIT_POLICIES), {"checkpoint_sha256": checkpoint_sha,
                                                "policies": {name: policy.to_dict() for name, policy in known.items()}})


def read_exit_policies(run: RunDir, checkpoint_sha: str) -> dict:
    """{criterion name: FittedPolicy} fitted on outputs of checkpoint `checkpoint_sha`; {} when there are none
    or they were fitted on another checkpoint's outputs (the run was retrained since: fit them again)."""
    from repro.exit_policy import FittedPolicy

    if not run.has(EXIT_POLICIES):
        return {}
    fix = fix_command(run, EXIT_POLICIES)
    data = _read_json_checked(run, EXIT_POLICIES, EXIT_POLICIES_SCHEMA, fix)
    if data["checkpoint_sha256"] != checkpoint_sha:
        return {}
    policies = {}
    for name, entry in data["policies"].items():
        try:
            policies[name] = FittedPolicy.from_dict(entry)
        except (KeyError, ValueError, TypeError, ReproError) as error:
            raise DamagedFile(run, EXIT_POLICIES, f"policy {name!r} is malformed ({error})", fix) from None
        if policies[name].criterion != name:
            raise DamagedFile(run, EXIT_POLICIES, f"policy {name!r} holds a {policies[name].policy!r} policy", fix)
    return policies
