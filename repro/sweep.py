"""Threshold sweeps, Pareto fronts and budget calibration, computed from stored exit outputs alone.

An early-exit network trades accuracy for compute through its exit thresholds (Scardapane et al. 2020,
Sec. 4; BranchyNet, Teerapittayanon et al. 2016, Sec. 3). `repro eval` stores every exit's logits and
gates once (outputs.pt); everything here is a pure function of those tensors (STYLE.md, principle 6):

- `operating_points`: for T threshold vectors, the accuracy, mean MACs, MAC speed-up and the fraction of
  samples leaving at each exit, vectorised across thresholds. Which exit a sample takes is decided with
  `repro.criteria.scores` and `repro.criteria.fires`, so it equals `criteria.select_exits` exactly.
- `threshold_grid`: K thresholds at quantiles of the observed validation scores plus the range ends.
- `pareto_front`: the points no other point beats on both accuracy and cost; sweep.csv flags the front
  within each (split, criterion), so every criterion's own curve can be drawn and compared.
- `calibrate`: a threshold chosen on validation only, for a largest accuracy drop versus the final exit
  (`max_drop`, in accuracy points) or a compute budget (`budget`, a fraction of the plain network's MACs),
  then reported on test. This is what the paper asks for and the reproduction report could not do.
Arrays in, tables out: nothing here reads a file or parses a command line (repro.steps runs `repro sweep`
on a run directory; repro.artifacts stores sweep.csv and calibration.json).

Units: accuracies and exit fractions are fractions in [0, 1]; MACs are multiply-accumulates per image;
MAC speed-up = plain_macs / mean_macs (the network without exits over the early-exit network's mean).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import torch

from repro import criteria
from repro.errors import ReproError, check_name

# Thresholds x samples evaluated at once: bounds the [chunk, N] masks to a few MB whatever T and N are.
CHUNK_ELEMENTS = 1 << 22
DEFAULT_THRESHOLD_COUNT = 201
CRITERION_CHOICES = (*criteria.CRITERIA, "all")
# Accuracy and MAC comparisons in calibration allow for float rounding of count / N and F * plain_macs.
TOLERANCE = 1e-12
SPLITS = ("val", "test")


class NoEarlyExits(ReproError):
    """A network with one classifier (the baseline): every sample leaves at the final exit, nothing to sweep."""

    def __init__(self):
        super().__init__("the run has no early exits (one classifier): every sample leaves at the final exit, nothing to sweep")


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SplitOutputs:
    """Every exit's outputs on one split, as stored in outputs.pt."""

    logits: torch.Tensor  # float [E, N, C], exits shallow to final
    gates: torch.Tensor | None  # float [E-1, N] in (0, 1), or None when the model has no learned gates
    targets: torch.Tensor  # int64 [N]

    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]

    @property
    def num_samples(self) -> int:
        return self.logits.shape[1]

    @property
    def has_gates(self) -> bool:
        return self.gates is not None

    def correct(self) -> torch.Tensor:
        """bool [E, N]: is exit b's top class the target?"""
        return self.logits.argmax(dim=-1) == self.targets[None]

    def exit_accuracy(self) -> torch.Tensor:
        """float64 [E]: accuracy of every exit when all samples are forced out there."""
        return self.correct().double().mean(dim=1)


@dataclass(frozen=True)
class OperatingPoints:
    """T operating points of one criterion on one split (row t = threshold vector t)."""

    criterion: str
    thresholds: torch.Tensor  # float64 [T, E-1]
    accuracy: torch.Tensor  # float64 [T], fraction
    mean_macs: torch.Tensor  # float64 [T], MACs per image
    exit_fractions: torch.Tensor  # float64 [T, E], each row sums to 1
    plain_macs: float  # MACs of the network without exits

    def __len__(self) -> int:
        return self.accuracy.shape[0]

    @property
    def macs_speedup(self) -> torch.Tensor:
        return self.plain_macs / self.mean_macs

    def point(self, index: int) -> dict:
        """One operating point as plain JSON-ready numbers (the calibration.json / eval.json form)."""
        return {
            "accuracy": self.accuracy[index].item(),
            "exit_fractions": self.exit_fractions[index].tolist(),
            "mean_macs": self.mean_macs[index].item(),
            "macs_speedup": self.macs_speedup[index].item(),
        }


# ---------------------------------------------------------------------------------------------- sweeps


def threshold_matrix(thresholds, num_early_exits: int) -> torch.Tensor:
    """Shared thresholds [T] or per-exit vectors [T, E-1] -> float64 [T, E-1], each row range-checked."""
    values = torch.as_tensor(thresholds, dtype=torch.float64)
    if values.dim() <= 1:
        values = values.reshape(-1, 1)
    if values.dim() == 2 and values.shape[1] == 1:  # one shared threshold per row
        values = values.expand(-1, num_early_exits)
    if values.dim() != 2 or values.shape[0] == 0:
        raise ReproError("thresholds must be a non-empty list of numbers or of per-exit vectors")
    low, high = criteria.THRESHOLD_RANGE
    in_range = (values >= low) & (values <= high)
    if values.shape[1] != num_early_exits or not bool(in_range.all()):
        # check_thresholds gives the one error message for a wrong count or an out-of-range value.
        row = 0 if values.shape[1] != num_early_exits else int((~in_range).any(dim=1).nonzero()[0])
        criteria.check_thresholds(values[row], num_early_exits)
    return values.contiguous()


def exits_taken(criterion: str, score: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Exit index per (threshold vector, sample): score float64 [E-1, N], thresholds [T, E-1] -> int64 [T, N].

    Walks the exits in order keeping a [T, N] mask of samples still running: a sample's exit is the number
    of early exits it passed without firing. Same rule and same float64 comparison as select_exits.
    """
    num_early, n = score.shape
    running = torch.ones(thresholds.shape[0], n, dtype=torch.bool)
    # uint8 counts are several times faster to accumulate than int64 (at most 255 early exits).
    exits = torch.zeros(thresholds.shape[0], n, dtype=torch.uint8 if num_early < 256 else torch.int64)
    for b in range(num_early):
        running &= criteria.fires(criterion, score[b][None], thresholds[:, b, None]).logical_not_()
        exits += running
    return exits.long()


def _per_exit_counts(criterion: str, score: torch.Tensor, thresholds: torch.Tensor, correct: torch.Tensor):
    """(samples, correct samples) leaving at each exit, int64 [T, E] each, for per-exit threshold vectors."""
    num_exits, n = correct.shape
    chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    counts, right = [], []
    for start in range(0, thresholds.shape[0], chunk):
        exits = exits_taken(criterion, score, thresholds[start : start + chunk])  # [t, N]
        # One bincount for the whole chunk: offset row t's exits by t * E.
        flat = (exits + torch.arange(exits.shape[0])[:, None] * num_exits).flatten()
        size = exits.shape[0] * num_exits
        counts.append(torch.bincount(flat, minlength=size).view(-1, num_exits))
        right.append(torch.bincount(flat, weights=correct.gather(0, exits).flatten().double(), minlength=size).view(-1, num_exits))
    return torch.cat(counts), torch.cat(right).round().long()


def _shared_counts(criterion: str, score: torch.Tensor, thresholds: torch.Tensor, correct: torch.Tensor):
    """Like `_per_exit_counts` for thresholds shared by all exits ([T]), in O(E N log T + E T).

    Negating turns `score >= t` into `-score <= -t` (exact in floating point), so take the entropy rule,
    fires iff s <= t. A sample gets past exit b iff no exit up to b fired, i.e. m_b = min over b' <= b of
    s_b' is > t. With the thresholds sorted (u_0 <= ... <= u_{T-1}) and k_b = #{j : u_j < m_b}, the sample
    is past exit b exactly for j < k_b; k_b does not grow with b, so it leaves at exit e for j in
    [k_e, k_{e-1}) (k_{-1} = T, k_{E-1} = 0). Those intervals go into one difference array per exit, and a
    cumulative sum over j turns them into per-threshold counts, without a [T, N] mask.
    """
    num_exits, n = correct.shape
    if criterion == "entropy":
        s, t = score, thresholds
    else:
        s, t = -score, -thresholds
    sorted_t, order = torch.sort(t)
    num_t = sorted_t.shape[0]
    past = torch.searchsorted(sorted_t, s.cummin(dim=0).values.contiguous(), side="left")  # k [E-1, N]
    upper = torch.cat([torch.full((1, n), num_t, dtype=torch.long), past])  # k_{e-1} [E, N]
    lower = torch.cat([past, torch.zeros(1, n, dtype=torch.long)])  # k_e [E, N]
    offsets = torch.arange(num_exits)[:, None] * (num_t + 1)
    size = num_exits * (num_t + 1)

    def per_threshold(weights):
        starts = torch.bincount((lower + offsets).flatten(), weights=weights, minlength=size)
        ends = torch.bincount((upper + offsets).flatten(), weights=weights, minlength=size)
        in_sorted_order = (starts - ends).view(num_exits, num_t + 1).cumsum(dim=1)[:, :num_t].T  # [T, E]
        result = torch.empty_like(in_sorted_order)
        result[order] = in_sorted_order
        return result

    return per_threshold(None).long(), per_threshold(correct.flatten().double()).round().long()


def operating_points(
    criterion: str,
    thresholds,
    split: SplitOutputs,
    exit_macs: torch.Tensor,
    plain_macs: float,
) -> OperatingPoints:
    """Accuracy, mean MACs and exit fractions for every threshold vector (see module docstring).

    Thresholds shared by all exits take the sort-based path (`_shared_counts`), per-exit vectors the
    mask path (`exits_taken`); both decide exits with the rule of criteria.fires and agree with
    criteria.select_exits exactly (tests/test_sweep.py).
    """
    num_exits, n = split.num_exits, split.num_samples
    matrix = threshold_matrix(thresholds, num_exits - 1)
    exit_macs = torch.as_tensor(exit_macs, dtype=torch.float64)
    if exit_macs.shape != (num_exits,):
        raise ReproError(f"exit_macs has {tuple(exit_macs.shape)} entries for {num_exits} exits")
    # Scores once per split, cast to float64 exactly as select_exits does before comparing.
    score = criteria.scores(criterion, split.logits, split.gates).double()
    correct = split.correct()
    if num_exits == 1:  # no early exit: everyone leaves at the final classifier
        counts = torch.full((len(matrix), 1), n, dtype=torch.long)
        right = correct.sum(dim=1).expand(len(matrix), 1)
    elif bool((matrix == matrix[:, :1]).all()):
        counts, right = _shared_counts(criterion, score, matrix[:, 0], correct)
    else:
        counts, right = _per_exit_counts(criterion, score, matrix, correct)
    count = counts.double()
    return OperatingPoints(
        criterion=criterion,
        thresholds=matrix,
        accuracy=right.sum(dim=1).double() / n,
        mean_macs=count @ exit_macs / n,
        exit_fractions=count / n,
        plain_macs=float(plain_macs),
    )


def threshold_grid(criterion: str, split: SplitOutputs, count: int = DEFAULT_THRESHOLD_COUNT) -> torch.Tensor:
    """`count` shared thresholds for a criterion, float64 [K <= count], sorted, from this split's scores.

    The range ends (0 and 1) plus the scores' quantiles at evenly spaced levels, pooled over the early
    exits. A linspace wastes most of its points: a trained network's normalised entropies pile up near 0
    (and top probabilities near 1), so evenly spaced thresholds jump over the region where exits change.
    Quantile thresholds move a roughly equal share of (exit, sample) decisions between neighbours, which
    traces the accuracy/cost front evenly. Thresholds equal to an observed score are exact switch points
    (the comparisons are <= / >=). Duplicates are dropped, so fewer than `count` may come back.
    Call it on the validation split: the grid must not be fitted to test data.
    """
    if count < 2:
        raise ReproError(f"--thresholds must be at least 2 (the range ends 0 and 1), got {count}")
    low, high = criteria.THRESHOLD_RANGE
    score = criteria.scores(criterion, split.logits, split.gates).double().flatten()
    ends = torch.tensor([low, high], dtype=torch.float64)
    if score.numel() == 0 or count == 2:
        return ends
    ordered = score.sort().values
    levels = torch.linspace(0.0, 1.0, count - 2, dtype=torch.float64)
    quantiles = ordered[(levels * (ordered.numel() - 1)).round().long()].clamp(low, high)
    return torch.unique(torch.cat([ends, quantiles]))


def pareto_front(accuracy: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """bool [T]: True where no other point has accuracy >= and cost <= with at least one strict.

    Sort by cost; among points of equal cost only the most accurate can be on the front, and it is on the
    front when it is strictly more accurate than every strictly cheaper point. Identical points share a flag.
    """
    accuracy = torch.as_tensor(accuracy, dtype=torch.float64)
    cost = torch.as_tensor(cost, dtype=torch.float64)
    if accuracy.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    order = torch.argsort(cost, stable=True)
    sorted_cost, sorted_acc = cost[order], accuracy[order]
    _, group = torch.unique_consecutive(sorted_cost, return_inverse=True)
    num_groups = int(group.max()) + 1
    group_best = torch.full((num_groups,), -torch.inf, dtype=torch.float64).scatter_reduce(0, group, sorted_acc, "amax")
    # Best accuracy among strictly cheaper points: running max over the groups before this one.
    cheaper_best = torch.cat([torch.tensor([-torch.inf], dtype=torch.float64), group_best.cummax(0).values[:-1]])
    on_front_sorted = (sorted_acc == group_best[group]) & (sorted_acc > cheaper_best[group])
    on_front = torch.empty_like(on_front_sorted)
    on_front[order] = on_front_sorted
    return on_front


# ---------------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen on validation for a target, and what it gives on validation and test."""

    criterion: str
    target: dict  # {"max_drop": D (accuracy points)} or {"budget": F (fraction of plain MACs)}
    thresholds: list[float]  # [E-1]
    val: dict  # operating point: accuracy, exit_fractions, mean_macs, macs_speedup
    test: dict

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "target": self.target, "thresholds": self.thresholds, "val": self.val, "test": self.test}


def describe_target(target: dict) -> str:
    if "max_drop" in target:
        return f"calibrated on val, max drop {float(target['max_drop'])} points"
    return f"calibrated on val, budget {target['budget']:g} x plain MACs"


def check_target(max_drop: float | None, budget: float | None) -> dict | None:
    """The calibration target from the two options (at most one), validated."""
    if max_drop is not None and budget is not None:
        raise ReproError("give --max-drop or --budget, not both")
    if max_drop is not None:
        if not max_drop >= 0:
            raise ReproError(f"--max-drop is an accuracy loss in points and must be >= 0, got {max_drop}")
        return {"max_drop": float(max_drop)}
    if budget is not None:
        if not budget > 0:
            raise ReproError(f"--budget is a fraction of the plain network's MACs and must be > 0, got {budget}")
        return {"budget": float(budget)}
    return None


def choose_on_val(val_points: list[OperatingPoints], final_accuracy: float, target: dict) -> tuple[int, int]:
    """(criterion index, threshold index) of the validation point that meets `target`.

    max_drop D: the cheapest point whose accuracy >= final_accuracy - D / 100 (ties: more accurate).
    budget F: the most accurate point with mean MACs <= F * plain_macs (ties: cheaper).
    Only validation numbers enter here; test is evaluated afterwards at the chosen thresholds.
    """
    candidates = [
        (points.mean_macs[t].item(), points.accuracy[t].item(), c, t)
        for c, points in enumerate(val_points)
        for t in range(len(points))
    ]
    if not candidates:
        raise ReproError("no operating points to calibrate on")
    if "max_drop" in target:
        floor = final_accuracy - target["max_drop"] / 100.0
        feasible = [p for p in candidates if p[1] >= floor - TOLERANCE]
        if not feasible:
            macs, acc, c, t = max(candidates, key=lambda p: (p[1], -p[0]))
            raise ReproError(
                f"no threshold keeps val accuracy within {target['max_drop']:g} points of the final exit "
                f"({final_accuracy:.2%}); the most accurate point is {_name(val_points[c], t)} at {acc:.2%}"
            )
        macs, acc, c, t = min(feasible, key=lambda p: (p[0], -p[1]))
        return c, t
    plain = val_points[0].plain_macs
    ceiling = target["budget"] * plain
    feasible = [p for p in candidates if p[0] <= ceiling * (1 + TOLERANCE)]
    if not feasible:
        macs, acc, c, t = min(candidates, key=lambda p: (p[0], -p[1]))
        raise ReproError(
            f"no threshold meets --budget {target['budget']:g} (mean MACs <= {ceiling:.4g}); the cheapest reachable "
            f"point on val is {_name(val_points[c], t)}: {macs / plain:.3f} x plain MACs at {acc:.2%} accuracy"
        )
    macs, acc, c, t = max(feasible, key=lambda p: (p[1], -p[0]))
    return c, t


def _name(points: OperatingPoints, index: int) -> str:
    return f"{points.criterion} threshold {format_threshold(points.thresholds[index])}"


def format_threshold(row):
    """A threshold vector (tensor or list) as written in sweep.csv: one number when shared by all exits, else a JSON list."""
    values = row.tolist() if isinstance(row, torch.Tensor) else list(row)
    if not values:
        return ""
    if all(v == values[0] for v in values):
        return values[0]
    return json.dumps(values)


def calibrate(
    val_points: list[OperatingPoints],
    splits: dict[str, SplitOutputs],
    exit_macs: torch.Tensor,
    target: dict,
) -> Calibration:
    """Choose on validation (`choose_on_val`), then evaluate the same thresholds on test."""
    final_accuracy = splits["val"].exit_accuracy()[-1].item()
    c, t = choose_on_val(val_points, final_accuracy, target)
    chosen = val_points[c]
    thresholds = chosen.thresholds[t : t + 1]
    test = operating_points(chosen.criterion, thresholds, splits["test"], exit_macs, chosen.plain_macs)
    return Calibration(chosen.criterion, dict(target), thresholds[0].tolist(), chosen.point(t), test.point(0))


# ---------------------------------------------------------------------------------------------- whole sweeps


def resolve_criteria(criterion: str, has_gates: bool) -> list[str]:
    """`all` -> every criterion that applies to the run; a named one is checked (gate needs gates)."""
    check_name("criterion", criterion, CRITERION_CHOICES)
    if criterion == "all":
        return [c for c in criteria.CRITERIA if c != "gate" or has_gates]
    return [criteria.check_criterion(criterion, has_gates)]


@dataclass(frozen=True)
class SweepResult:
    """Every (split, criterion) sweep of one run, and the calibration when one was asked for."""

    points: dict[tuple[str, str], OperatingPoints]  # (split, criterion) -> points
    pareto: dict[tuple[str, str], torch.Tensor]  # (split, criterion) -> bool [T]
    final_accuracy: dict[str, float]  # split -> final exit's accuracy
    calibration: Calibration | None

    def with_criterion(self, other: "SweepResult", source: str, name: str) -> "SweepResult":
        """This result plus `other`'s sweep of criterion `source`, named `name` (a fitted policy's sweep,
        swept as gates: repro.exit_policy); this result's calibration stays."""
        renamed = {(split, name): replace(points, criterion=name) for (split, criterion), points in other.points.items()
                   if criterion == source}
        pareto = {(split, name): flags for (split, criterion), flags in other.pareto.items() if criterion == source}
        return replace(self, points={**self.points, **renamed}, pareto={**self.pareto, **pareto})

    def rows(self) -> list[dict]:
        """sweep.csv rows: split, criterion, threshold, accuracy, mean_macs, macs_speedup, exit_fractions, pareto."""
        rows = []
        for (split, criterion), points in self.points.items():
            speedup = points.macs_speedup
            flags = self.pareto[(split, criterion)]
            for t in range(len(points)):
                rows.append(
                    {
                        "split": split,
                        "criterion": criterion,
                        "threshold": format_threshold(points.thresholds[t]),
                        "accuracy": points.accuracy[t].item(),
                        "mean_macs": points.mean_macs[t].item(),
                        "macs_speedup": speedup[t].item(),
                        "exit_fractions": json.dumps(points.exit_fractions[t].tolist()),
                        "pareto": "true" if flags[t] else "false",
                    }
                )
        return rows


def sweep_outputs(
    splits: dict[str, SplitOutputs],
    exit_macs: torch.Tensor,
    plain_macs: float,
    criterion: str = "all",
    thresholds=None,
    count: int = DEFAULT_THRESHOLD_COUNT,
    target: dict | None = None,
) -> SweepResult:
    """Sweep every criterion on val and test, flag each (split, criterion) Pareto front, calibrate.

    thresholds: None -> `threshold_grid(count)` fitted on val per criterion (the same grid is then used on
    test); else shared thresholds [T] or per-exit vectors [T, E-1]. The Pareto front is taken within each
    (split, criterion) so that every criterion's own accuracy/cost curve can be drawn; calibration chooses
    among all swept criteria.
    """
    val = splits["val"]
    if val.num_exits < 2:
        raise NoEarlyExits()
    names = resolve_criteria(criterion, val.has_gates)
    points: dict[tuple[str, str], OperatingPoints] = {}
    for name in names:
        grid = threshold_grid(name, val, count) if thresholds is None else thresholds
        for split in SPLITS:
            points[(split, name)] = operating_points(name, grid, splits[split], exit_macs, plain_macs)
    pareto = {key: pareto_front(p.accuracy, p.mean_macs) for key, p in points.items()}
    calibration = None
    if target is not None:
        calibration = calibrate([points[("val", name)] for name in names], splits, exit_macs, target)
    final_accuracy = {split: splits[split].exit_accuracy()[-1].item() for split in SPLITS}
    return SweepResult(points, pareto, final_accuracy, calibration)


def best_within_budget(result: SweepResult, criterion: str, budget: float) -> tuple[float, float, float] | None:
    """(val accuracy, test accuracy, test MAC speed-up) of `criterion`'s most accurate validation point whose
    mean MACs are at most `budget` x the plain network's (ties: the cheaper), read on test at the same
    thresholds; None when no point is that cheap on validation."""
    val, test = result.points[("val", criterion)], result.points[("test", criterion)]
    affordable = (val.mean_macs <= budget * val.plain_macs * (1 + TOLERANCE)).nonzero().flatten().tolist()
    if not affordable:
        return None
    best = max(affordable, key=lambda t: (val.accuracy[t].item(), -val.mean_macs[t].item()))
    return val.accuracy[best].item(), test.accuracy[best].item(), test.macs_speedup[best].item()
