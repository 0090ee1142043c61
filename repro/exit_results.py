"""What `repro eval` computes: every exit's outputs over a split, and eval.json's summary of them.

Compute once, reduce many times (STYLE.md, principle 6): the best checkpoint's logits of every exit and its
gates are stored in outputs.pt (repro.artifacts.StoredOutputs) with the checkpoint's SHA-256, so sweeps,
calibration and reports never re-run the model. Gates are stored only for methods whose exit criterion is
the learned gate (the paper's `proposed`, Scardapane et al. 2020, Eq. 5); other methods' gate heads are
untrained. repro.steps.evaluate_run ties this to a run directory.

eval.json: per-exit accuracy (the report's Figure 3), the final exit's and the method's own output's
accuracy (the soft output f~_1 for soft-output methods), mean gate per exit, per-exit MACs and parameters,
and the early-exit result at the method's default operating point: gate >= 0.5 for learned gates
(the paper's choice), the threshold calibrated on val for an accuracy drop of at most 1 point for
entropy / top-probability criteria, and the final exit for the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repro import sweep
from repro.errors import ReproError
from repro.sweep import SplitOutputs

SPLITS = sweep.SPLITS
GATE_THRESHOLD = 0.5  # the paper's operating point for learned gates
DEFAULT_MAX_DROP = 1.0  # accuracy points: the default operating point of entropy / maxprob methods


# ---------------------------------------------------------------------------------------------- computing


@dataclass(frozen=True)
class SplitPass:
    """One pass of the model over a split: the stored outputs and the method's own accuracy."""

    outputs: SplitOutputs
    method_accuracy: float


def collect_outputs(model, method, images: torch.Tensor, labels: torch.Tensor, mean, std, batch_size: int, device,
                    store_gates: bool) -> SplitPass:
    """Every exit's logits (and gates) over one split, batched, in inference mode; results on the CPU."""
    from repro.data import DeviceLoader
    from repro.models.inference import in_layout

    loader = DeviceLoader(images, labels, batch_size, device, mean, std)
    logits, gates, targets, method_correct = [], [], [], 0
    with torch.inference_mode():
        for x, y in loader:
            out = model(in_layout(x, batch_size))  # the layout batched early exit runs in: the same numbers
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


def summarise(config: dict, run_name: str, checkpoint_sha256: str, costs, method, passes: dict[str, SplitPass]) -> dict:
    """eval.json's body: per-exit and method accuracy on val and test, costs, and the default operating point."""
    exit_macs = torch.as_tensor(costs.cumulative_macs, dtype=torch.float64)
    plain_macs = float(costs.plain_macs)
    splits = {name: p.outputs for name, p in passes.items()}
    return {
        "run": run_name,
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
