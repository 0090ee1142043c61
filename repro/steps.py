"""The steps after training, each on one run directory: evaluate, time, sweep.

Each step reads what it needs through repro.artifacts, computes with a pure module (repro.exit_results,
repro.timing, repro.sweep) and writes its result files back through repro.artifacts:

- `evaluate_run` (`repro eval RUN`): outputs.pt and eval.json from the run's checkpoint.pt;
- `time_run` (`repro eval RUN --timing`): timing.json at the operating point eval.json holds;
- `sweep_run` (`repro sweep RUN`): sweep.csv (+ calibration.json when a target is given) from outputs.pt;
- `fit_gates_run` (`repro fit-gates RUN`): exit policies fitted on half of validation (exit_policies.json)
  from outputs.pt, then the sweep again with them in it.

A result is always labelled with the SHA-256 of the checkpoint it came from, and a step refuses to write
one whose checkpoint changed while it ran (a training run finishing beside it).
"""

from __future__ import annotations

import os

import torch

from repro import artifacts, rundir
from repro.errors import ReproError
from repro.rundir import RunDir

SPLITS = artifacts.SPLITS


def _current_checkpoint(run: RunDir) -> str:
    sha = artifacts.checkpoint_sha256(run)
    if sha is None:
        raise ReproError(f"run {run.path} has no {rundir.CHECKPOINT}; {artifacts.fix_command(run, rundir.CHECKPOINT)}")
    return sha


def _unchanged(run: RunDir, sha: str, command: str) -> None:
    """Raise unless checkpoint.pt is still the one a step started from: never label a result wrongly."""
    if artifacts.checkpoint_sha256(run) != sha:
        raise ReproError(f"{run.file(rundir.CHECKPOINT)} changed while `{command}` ran; run it again")


def evaluate_run(run: RunDir, batch_size: int = 256, device: str = "cpu") -> dict:
    """`repro eval RUN`: outputs.pt and eval.json from the run's best checkpoint; returns eval.json's dict."""
    from repro.exit_results import collect_outputs, summarise
    from repro.methods import get_method
    from repro.rebuild import load_run

    if batch_size < 1:
        raise ReproError(f"--batch-size must be at least 1, got {batch_size}")
    sha = _current_checkpoint(run)
    loaded = load_run(run.path, device=device)
    model, dataset = loaded.model, loaded.dataset
    method = get_method(loaded.config.method, **loaded.config.method_options())
    store_gates = method.criterion == "gate" and model.num_exits > 1
    model.eval()
    passes = {
        name: collect_outputs(model, method, *loaded.splits[name], dataset.mean, dataset.std, batch_size, device, store_gates)
        for name in SPLITS
    }
    _unchanged(run, sha, f"repro eval {run.path}")
    summary = summarise(loaded.config.to_dict(), run.name, sha, model.costs, method, passes)
    exit_macs = torch.as_tensor(model.costs.cumulative_macs, dtype=torch.float64)
    outputs = artifacts.StoredOutputs(exit_macs, sha, {name: p.outputs for name, p in passes.items()}, float(model.costs.plain_macs))
    artifacts.write_outputs(run, outputs)
    artifacts.write_eval(run, summary)
    return summary


def time_run(run: RunDir, n_images: int = 1000, batch_size: int = 256, device: str = "cpu", threads: int | None = None) -> dict:
    """`repro eval RUN --timing`: time the run's operating point (from eval.json) on a seeded random sample of
    its test images (repro.timing.sample_images).

    threads: CPU threads for torch while timing (None: leave torch's setting). On a machine shared with
    other work, 1 thread avoids intra-op barriers waiting for a descheduled thread, which can slow small
    batch-1 layers several-fold and would measure the load, not the network.
    """
    if threads is not None and threads < 1:
        raise ReproError(f"--threads must be at least 1, got {threads}")
    if n_images < 1:
        raise ReproError(f"--timing-images must be at least 1, got {n_images}")
    if batch_size < 1:
        raise ReproError(f"--batch-size must be at least 1, got {batch_size}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_run(run, n_images, batch_size, device)
    finally:
        torch.set_num_threads(previous)


def _time_run(run: RunDir, n_images: int, batch_size: int, device: str) -> dict:
    from repro.data import DeviceLoader
    from repro.environment import describe_device
    from repro.rebuild import load_run
    from repro.timing import IMAGES, measure, sample_images

    sha = _current_checkpoint(run)
    evaluation = artifacts.read_eval(run)
    point = evaluation["operating_point"]
    loaded = load_run(run.path, device=device)
    model = loaded.model
    criterion, thresholds = point["criterion"], point["thresholds"]
    if criterion is None:
        if model.num_exits > 1:
            raise ReproError(f"eval.json of run {run.path} has no early-exit operating point ({point['how']}); nothing to time")
        criterion, thresholds = "entropy", []  # one classifier: every path ends at the final exit
    images, labels = loaded.splits["test"]
    chosen = sample_images(len(labels), n_images)
    images, labels = images[chosen], labels[chosen]
    x, y = next(iter(DeviceLoader(images, labels, len(images), device, loaded.dataset.mean, loaded.dataset.std)))
    body = measure(model, x, y, criterion, thresholds, float(evaluation["plain_macs"]), batch_size)
    _unchanged(run, sha, f"repro eval {run.path} --timing")
    timing = {
        "device": describe_device(torch.device(device)),
        "n_images": body.pop("n_images"),
        "batch_size": body.pop("batch_size"),
        "operating_point": {"criterion": point["criterion"], "thresholds": point["thresholds"]},
        "checkpoint_sha256": sha,
        "images": IMAGES,  # said here, where the sample is drawn (measure times whatever it is given)
        **body,
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    artifacts.write_timing(run, timing)
    return timing


def sweep_run(run: RunDir, criterion: str = "all", count: int | None = None, thresholds=None, target: dict | None = None,
              fitted: bool = True):
    """`repro sweep` for one run directory: outputs.pt -> sweep.csv (+ calibration.json when a target is given).
    With criterion "all" (and `fitted`), the exit policies fitted on the same outputs (exit_policies.json)
    are swept too; the calibration chooses among the built-in criteria only, so fitting a policy never moves
    the run's operating point.

    thresholds: None (a grid of `count` fitted on validation) or a float64 matrix [T, E-1] already parsed.
    """
    from repro.sweep import DEFAULT_THRESHOLD_COUNT, sweep_outputs, threshold_matrix

    outputs = artifacts.read_outputs(run)
    if thresholds is not None:
        thresholds = threshold_matrix(thresholds, outputs.num_exits - 1)
    count = DEFAULT_THRESHOLD_COUNT if count is None else count
    result = sweep_outputs(outputs.splits, outputs.exit_macs, outputs.plain_macs, criterion, thresholds, count, target)
    if criterion == "all" and fitted:  # and every exit policy fitted on this checkpoint's outputs (repro fit-gates)
        from repro.exit_policy import policy_splits

        for name, policy in artifacts.read_exit_policies(run, outputs.checkpoint_sha256).items():
            fitted = sweep_outputs(policy_splits(policy, outputs.splits), outputs.exit_macs, outputs.plain_macs,
                                   "gate", thresholds, count)
            result = result.with_criterion(fitted, "gate", name)
    artifacts.write_sweep(run, result.rows(), outputs.checkpoint_sha256)
    if result.calibration is not None:
        artifacts.write_calibration(run, {**result.calibration.to_dict(), "checkpoint_sha256": outputs.checkpoint_sha256})
    return result


def fit_gates_run(run: RunDir, policies: list[str], cost_weight: float, seed: int):
    """`repro fit-gates RUN`: fit each policy (repro.exit_policy) on half of the run's validation outputs,
    store them in exit_policies.json and sweep again (keeping calibration.json's target, if any), so that
    they appear in sweep.csv beside the built-in criteria. Needs outputs.pt (written by `repro eval` from
    checkpoint.pt). Returns ({criterion name: FittedPolicy}, the SweepResult)."""
    from repro.exit_policy import criterion_name, fit_policy, halves, halves_digest
    from repro.sweep import NoEarlyExits

    outputs = artifacts.read_outputs(run)
    if outputs.num_exits < 2:
        raise NoEarlyExits()
    val = outputs.splits["val"]
    fit, calibration = halves(val.num_samples, seed)
    fitted = {criterion_name(policy): fit_policy(policy, val.logits[:, fit], val.targets[fit], outputs.exit_macs,
                                                 outputs.plain_macs, cost_weight, seed, len(calibration),
                                                 halves_digest(fit, val.targets))
              for policy in policies}
    if artifacts.checkpoint_sha256(run) not in (None, outputs.checkpoint_sha256):
        raise ReproError(f"{run.file(rundir.CHECKPOINT)} changed while `repro fit-gates` ran; run it again")
    artifacts.write_exit_policies(run, outputs.checkpoint_sha256, fitted)
    try:
        target = artifacts.read_calibration(run)["target"] if run.has(rundir.CALIBRATION) else None
    except ReproError:
        target = None  # a stale or damaged calibration is not this command's to keep
    return fitted, sweep_run(run, target=target)
