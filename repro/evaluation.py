"""`repro eval`: run every exit once over val and test, store the raw outputs, summarise them in eval.json.

Compute once, reduce many times (STYLE.md, principle 6): the best checkpoint's logits of every exit and its
gates are stored in outputs.pt with the checkpoint's SHA-256, so sweeps, calibration and reports never
re-run the model, and outputs from an older checkpoint are refused instead of silently mixed in.

outputs.pt holds exactly {"exit_macs": float [E], "checkpoint_sha256": str, "splits": {"val"|"test":
{"logits": float [E, N, C], "gates": float [E-1, N] | None, "targets": int64 [N]}}}. Gates are stored
only for methods whose exit criterion is the learned gate (the paper's `proposed`, Scardapane et al.
2020, Eq. 5); other methods' gate heads are untrained. The plain network's MACs, needed for speed-ups,
are not part of outputs.pt: they are read from eval.json, written beside it from the same checkpoint.

eval.json: per-exit accuracy (the report's Figure 3), the final exit's and the method's own output's
accuracy (the soft output f~_1 for soft-output methods), mean gate per exit, per-exit MACs and parameters,
and the early-exit result at the method's default operating point: gate >= 0.5 for learned gates
(the paper's choice), the threshold calibrated on val for an accuracy drop of at most 1 point for
entropy / top-probability criteria, and the final exit for the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repro import rundir, sweep
from repro.errors import ReproError
from repro.sweep import SplitOutputs

SPLITS = sweep.SPLITS
GATE_THRESHOLD = 0.5  # the paper's operating point for learned gates
DEFAULT_MAX_DROP = 1.0  # accuracy points: the default operating point of entropy / maxprob methods


@dataclass(frozen=True)
class StoredOutputs:
    """outputs.pt in memory, plus the plain network's MACs from eval.json (None until known)."""

    exit_macs: torch.Tensor  # float64 [E]: cumulative MACs of leaving at each exit
    checkpoint_sha256: str
    splits: dict[str, SplitOutputs]
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

    @classmethod
    def from_dict(cls, data, source: str, plain_macs: float | None = None) -> "StoredOutputs":
        """Check the structure (shapes agree, values finite) so later errors cannot be cryptic."""

        def bad(reason: str):
            return ReproError(f"{source} is not a valid outputs file ({reason}); recompute it with `repro eval`")

        if not isinstance(data, dict) or not {"exit_macs", "checkpoint_sha256", "splits"} <= set(data):
            raise bad("missing exit_macs, checkpoint_sha256 or splits")
        exit_macs = torch.as_tensor(data["exit_macs"], dtype=torch.float64)
        num_exits = exit_macs.numel()
        splits = {}
        for name in SPLITS:
            raw = data["splits"].get(name) if isinstance(data["splits"], dict) else None
            if not isinstance(raw, dict) or "logits" not in raw or "targets" not in raw:
                raise bad(f"no {name} split")
            logits, gates, targets = raw["logits"], raw.get("gates"), raw["targets"]
            if logits.dim() != 3 or logits.shape[0] != num_exits:
                raise bad(f"{name} logits have shape {tuple(logits.shape)}, expected [{num_exits}, N, C]")
            if targets.shape != (logits.shape[1],):
                raise bad(f"{name} targets have shape {tuple(targets.shape)} for {logits.shape[1]} samples")
            if gates is not None and gates.shape != (num_exits - 1, logits.shape[1]):
                raise bad(f"{name} gates have shape {tuple(gates.shape)}, expected [{num_exits - 1}, {logits.shape[1]}]")
            if not torch.isfinite(logits).all() or (gates is not None and not torch.isfinite(gates).all()):
                raise bad(f"{name} outputs contain NaN or infinite values")
            splits[name] = SplitOutputs(logits, gates, targets.long())
        return cls(exit_macs, str(data["checkpoint_sha256"]), splits, plain_macs)


def recompute_hint(run: rundir.RunDir) -> str:
    return f"recompute them with `repro eval {run.path}`"


def load_outputs(run: rundir.RunDir) -> StoredOutputs:
    """outputs.pt of a run, refused when it does not come from the run's current checkpoint.pt.

    The plain network's MACs come from eval.json, which must name the same checkpoint.
    """
    path = rundir.require(run, rundir.OUTPUTS, f"run `repro eval {run.path}` first")
    data = rundir.load_torch(path, f"{rundir.OUTPUTS} of run {run.path}")
    outputs = StoredOutputs.from_dict(data, str(path))
    if run.has(rundir.CHECKPOINT) and rundir.file_sha256(run.file(rundir.CHECKPOINT)) != outputs.checkpoint_sha256:
        raise ReproError(
            f"{path} was computed from another checkpoint than {run.file(rundir.CHECKPOINT)} "
            f"(the run was retrained or resumed since); {recompute_hint(run)}"
        )
    evaluation = rundir.read_json(
        rundir.require(run, rundir.EVAL, f"it is written with outputs.pt; {recompute_hint(run)}"), f"{rundir.EVAL} of run {run.path}"
    )
    if evaluation.get("checkpoint_sha256") != outputs.checkpoint_sha256 or not evaluation.get("plain_macs"):
        raise ReproError(f"{run.file(rundir.EVAL)} does not belong to {path}; {recompute_hint(run)}")
    return StoredOutputs(outputs.exit_macs, outputs.checkpoint_sha256, outputs.splits, float(evaluation["plain_macs"]))


# ---------------------------------------------------------------------------------------------- computing


@dataclass(frozen=True)
class SplitPass:
    """One pass of the model over a split: the stored outputs and the method's own accuracy."""

    outputs: SplitOutputs
    method_accuracy: float


def run_split(model, method, images: torch.Tensor, labels: torch.Tensor, mean, std, batch_size: int, device, store_gates: bool) -> SplitPass:
    """Every exit's logits (and gates) over one split, batched, in inference mode; results on the CPU."""
    from repro.data import DeviceLoader

    loader = DeviceLoader(images, labels, batch_size, device, mean, std)
    logits, gates, targets, method_correct = [], [], [], 0
    with torch.inference_mode():
        for x, y in loader:
            out = model(x)
            logits.append(torch.stack([f.float() for f in out.logits]).cpu())
            if store_gates:
                gates.append(torch.stack([g.float() for g in out.gates]).cpu())
            method_correct += int((method.method_probs(out).argmax(dim=1) == y).sum())
            targets.append(y.cpu())
    n = labels.shape[0]
    split = SplitOutputs(
        logits=torch.cat(logits, dim=1),
        gates=torch.cat(gates, dim=1) if store_gates else None,
        targets=torch.cat(targets).long(),
    )
    return SplitPass(split, method_correct / max(n, 1))


def operating_point(criterion: str | None, splits: dict[str, SplitOutputs], exit_macs: torch.Tensor, plain_macs: float) -> dict:
    """The method's default operating point (see module docstring) on val and test."""
    num_early = exit_macs.shape[0] - 1
    if criterion is None or num_early == 0:
        return final_exit_point(splits, exit_macs, plain_macs, "no early exits: every sample leaves at the final exit")
    if criterion == "gate":
        thresholds = torch.full((1, num_early), GATE_THRESHOLD, dtype=torch.float64)
        points = {name: sweep.operating_points("gate", thresholds, split, exit_macs, plain_macs) for name, split in splits.items()}
        return {
            "criterion": "gate",
            "thresholds": thresholds[0].tolist(),
            "how": f"learned gates at {GATE_THRESHOLD:g} (the paper's operating point)",
            **{name: p.point(0) for name, p in points.items()},
        }
    target = {"max_drop": DEFAULT_MAX_DROP}
    grid = sweep.threshold_grid(criterion, splits["val"])
    val_points = sweep.operating_points(criterion, grid, splits["val"], exit_macs, plain_macs)
    try:
        chosen = sweep.calibrate([val_points], splits, exit_macs, target)
    except ReproError as error:  # no threshold keeps val accuracy within 1 point: keep the final exit
        return final_exit_point(splits, exit_macs, plain_macs, f"{error}; so every sample leaves at the final exit")
    return {"criterion": criterion, "thresholds": chosen.thresholds, "how": sweep.describe_target(target), "val": chosen.val, "test": chosen.test}


def final_exit_point(splits: dict[str, SplitOutputs], exit_macs: torch.Tensor, plain_macs: float, how: str) -> dict:
    """Every sample leaves at the final classifier (the baseline's only operating point)."""
    num_early = exit_macs.shape[0] - 1
    final_macs = exit_macs[-1].item()
    points = {
        name: {
            "accuracy": split.exit_accuracy()[-1].item(),
            "exit_fractions": [0.0] * num_early + [1.0],
            "mean_macs": final_macs,
            "macs_speedup": plain_macs / final_macs,
        }
        for name, split in splits.items()
    }
    return {"criterion": None, "thresholds": [], "how": how, **points}


def split_summary(split: SplitOutputs, method_accuracy: float) -> dict:
    exit_accuracy = split.exit_accuracy()
    return {
        "exit_accuracy": exit_accuracy.tolist(),
        "final_accuracy": exit_accuracy[-1].item(),
        "method_accuracy": method_accuracy,
        "mean_gate": split.gates.double().mean(dim=1).tolist() if split.gates is not None else None,
        "n": split.num_samples,
    }


def evaluate_run(run: rundir.RunDir, batch_size: int = 256, device: str = "cpu") -> dict:
    """`repro eval RUN`: outputs.pt and eval.json from the run's best checkpoint; returns eval.json's dict."""
    from repro.build import load_run
    from repro.methods import get_method

    checkpoint = rundir.require_checkpoint(run)
    if batch_size < 1:
        raise ReproError(f"--batch-size must be at least 1, got {batch_size}")
    checkpoint_sha256 = rundir.file_sha256(checkpoint)
    loaded = load_run(run.path, device=device)
    model, dataset = loaded.model, loaded.dataset
    method = get_method(loaded.config.method, **loaded.config.method_options())
    config = loaded.config.to_dict()
    costs = model.costs
    exit_macs = torch.as_tensor(costs.cumulative_macs, dtype=torch.float64)
    plain_macs = float(costs.plain_macs)
    store_gates = method.criterion == "gate" and model.num_exits > 1
    model.eval()

    passes = {}
    for name in SPLITS:
        images, labels = loaded.splits[name]
        passes[name] = run_split(model, method, images, labels, dataset.mean, dataset.std, batch_size, device, store_gates)
    splits = {name: p.outputs for name, p in passes.items()}
    outputs = StoredOutputs(exit_macs, checkpoint_sha256, splits, plain_macs)
    # The checkpoint may have changed while we computed (a training run finishing): never store a mix.
    if rundir.file_sha256(checkpoint) != checkpoint_sha256:
        raise ReproError(f"{checkpoint} changed while it was being evaluated; run `repro eval {run.path}` again")

    summary = {
        "run": run.name,
        "model": config.get("model"),
        "dataset": config.get("dataset"),
        "method": config.get("method"),
        "recipe": config.get("recipe"),
        "seed": config.get("seed"),
        "checkpoint_sha256": checkpoint_sha256,
        "num_exits": int(exit_macs.shape[0]),
        "exit_macs": exit_macs.tolist(),
        "plain_macs": plain_macs,
        "exit_params": [int(p) for p in costs.params],
        "test": split_summary(splits["test"], passes["test"].method_accuracy),
        "val": split_summary(splits["val"], passes["val"].method_accuracy),
        "operating_point": operating_point(method.criterion if method.uses_exits else None, splits, exit_macs, plain_macs),
    }
    rundir.save_torch(run.file(rundir.OUTPUTS), outputs.to_dict())
    rundir.write_json(run.file(rundir.EVAL), summary)
    return summary
