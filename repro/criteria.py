"""Early-exit criteria: when is exit b confident enough for a sample to leave there?

Three criteria, each a score in [0, 1] per early exit and sample, and a rule comparing it to a threshold t:
- `entropy` (BranchyNet, Teerapittayanon et al. 2016; the reproduction report's "Proposed"):
  normalised entropy H(softmax(f_b)) / log C; the sample exits when it is at or below t.
- `maxprob` (the report's "Prop+DifferentCriterion"): the top softmax probability; exits at or above t.
- `gate` (the paper, Scardapane et al. 2020): the learned gate g_b(x); exits at or above t.

A sample leaves at the first early exit that fires, else at the final classifier. `select_exits` is the
"run everything, then select" reference that the skipping inference paths (repro.models.inference) and
the sweeps (repro.sweep) must agree with exactly, so all of them take their scores and rules from here.
"""

from __future__ import annotations

import math

import torch

from repro.errors import ReproError, check_name

CRITERIA = ("entropy", "maxprob", "gate")
# Every score lies in [0, 1], so every threshold must too.
THRESHOLD_RANGE = (0.0, 1.0)


def _as_float64(logits: torch.Tensor) -> torch.Tensor:
    # Scores are computed in float64 (exact widening of float32/bf16 logits): in float32 the top
    # probability of a confident exit rounds to exactly 1.0 (any logit gap above about 17), and then no
    # threshold in [0, 1] could keep it from exiting. float64 saturates only beyond a gap of about 37.
    return logits.double()


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dimension divided by log C: 0 = one-hot, 1 = uniform."""
    num_classes = logits.shape[-1]
    log_probs = torch.log_softmax(_as_float64(logits), dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return (entropy / math.log(num_classes)).clamp(0.0, 1.0) if num_classes > 1 else torch.zeros_like(entropy)


def max_probability(logits: torch.Tensor) -> torch.Tensor:
    """Top softmax probability over the last dimension."""
    return torch.softmax(_as_float64(logits), dim=-1).amax(dim=-1)


def check_criterion(criterion: str, has_gates: bool = True) -> str:
    check_name("criterion", criterion, CRITERIA)
    if criterion == "gate" and not has_gates:
        raise ReproError("criterion 'gate' needs a model with learned gates (method 'proposed'); use entropy or maxprob")
    return criterion


def scores(criterion: str, logits: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
    """The criterion's score for each early exit: logits [E, N, C] (all exits) -> [E-1, N].

    Also accepts one exit's logits [N, C] (and its gate [N]) and returns [N].
    """
    check_criterion(criterion, has_gates=gates is not None)
    early_logits = logits[:-1] if logits.dim() == 3 else logits
    if criterion == "entropy":
        return normalised_entropy(early_logits)
    if criterion == "maxprob":
        return max_probability(early_logits)
    return _as_float64(gates)


def fires(criterion: str, score: torch.Tensor, threshold) -> torch.Tensor:
    """Boolean mask: does a sample with this score leave at an exit with this threshold?

    Compared in float64, whatever the score's dtype: widening float32 (or bf16) to float64 is exact, and a
    threshold is a float64 number, so every code path (the reference, the skipping paths, the sweeps)
    draws the line at the same place. A float32 gate of 0.7 is 0.69999998..., below a threshold of 0.7.
    """
    score = score.double()
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.to(device=score.device, dtype=torch.float64)
    if criterion == "entropy":
        return score <= threshold
    return score >= threshold


def check_thresholds(thresholds, num_early_exits: int) -> torch.Tensor:
    """One threshold for every early exit (a number) or one per early exit (a sequence) -> float tensor [E-1]."""
    return torch.tensor(threshold_list(thresholds, num_early_exits), dtype=torch.float64)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def threshold_list(thresholds, num_early_exits: int) -> list[float]:
    """`check_thresholds` as Python floats (float64): the batch-1 path validates on every call, and a number or a
    list of numbers is read without a tensor (~1 us instead of ~8); anything else goes through torch.as_tensor."""
    if _is_number(thresholds):
        values = [float(thresholds)]
    elif isinstance(thresholds, (list, tuple)) and all(_is_number(value) for value in thresholds):
        values = [float(value) for value in thresholds]
    else:
        values = torch.as_tensor(thresholds, dtype=torch.float64).flatten().tolist()
    low, high = THRESHOLD_RANGE
    # Checked before one number is broadcast: for a network without early exits it becomes no threshold at all.
    bad = next((value for value in values if not low <= value <= high), None)  # NaN is bad too
    if bad is not None:
        raise ReproError(f"threshold {bad} is outside [{low}, {high}], the range of every exit criterion")
    if len(values) == 1:
        values = values * num_early_exits
    if len(values) != num_early_exits:
        raise ReproError(f"got {len(values)} thresholds for {num_early_exits} early exits; give one, or one per early exit")
    return values


# The batch-1 path decides from a score computed in Python floats (exact widenings of the exit's float32
# logits), which differs from the float64 reference computation by rounding only (~1e-15). When that score
# lies within this guard of the threshold, the reference computation itself decides, so every decision is
# the reference's.
DECISION_GUARD = 1e-9


def fires_one(criterion: str, logits: torch.Tensor, threshold: float) -> bool:
    """Does one sample (logits [1, C]) leave at an exit with this entropy or top-probability threshold?
    Exactly `fires(criterion, scores(criterion, logits), threshold)`, at a fraction of its cost at batch 1
    (one tensor operation instead of about ten)."""
    return decide_one(criterion, logits, threshold) is not None


def decide_one(criterion: str, logits: torch.Tensor, threshold: float) -> int | None:
    """`fires_one`, returning the predicted class (the first top logit, as argmax) when the sample leaves,
    else None: the batch-1 path's whole decision from one tensor read."""
    values = logits[0].tolist()
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = math.fsum(exps)
    if criterion == "maxprob":
        score = 1.0 / total
    else:
        log_total = math.log(total)
        entropy = -math.fsum(e / total * (v - top - log_total) for e, v in zip(exps, values))
        score = min(1.0, max(0.0, entropy / math.log(len(values)))) if len(values) > 1 else 0.0
    if abs(score - threshold) <= DECISION_GUARD:
        fired = bool(fires(criterion, scores(criterion, logits), threshold).item())
    else:
        fired = score <= threshold if criterion == "entropy" else score >= threshold
    return values.index(top) if fired else None


def first_firing_exit(fired: torch.Tensor) -> torch.Tensor:
    """fired [E-1, N] bool -> index of the first early exit that fires per sample, or E-1 (the final exit)."""
    num_early, n = fired.shape
    # Append an always-firing row for the final classifier, then take the first True per column.
    always = torch.ones(1, n, dtype=torch.bool, device=fired.device)
    stacked = torch.cat([fired, always], dim=0).to(torch.int8)
    return stacked.argmax(dim=0)


def select_exits(criterion: str, thresholds, logits: torch.Tensor, gates: torch.Tensor | None = None):
    """The "run everything, then select" reference.

    logits [E, N, C] of every exit (shallow to final), gates [E-1, N] or None -> (exit index [N] int64,
    predicted class [N] int64): each sample leaves at the first early exit whose criterion fires.
    """
    num_exits = logits.shape[0]
    values = check_thresholds(thresholds, num_exits - 1)
    score = scores(criterion, logits, gates)
    fired = fires(criterion, score, values[:, None])
    exits = first_firing_exit(fired).long()
    predictions = logits.argmax(dim=-1).gather(0, exits[None]).squeeze(0)
    return exits, predictions
