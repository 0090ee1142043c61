"""Exit policies fitted after training, on held-out data (`repro fit-gates`): the network is frozen and only
the decision to leave is learned, from each early exit's outputs as `repro eval` stored them (outputs.pt).

Why: trained end to end, the paper's gates learn the *training* split's ranking of the exits, where an
overfitting exit 1 looks best, and early stopping freezes them mid-move (issue 25). Fitting the decision
on validation data the network never trained on removes that mismatch (as Learning to Stop, Chen et al.
2020, EENet, Ilhan et al. 2023, and JEI-DNN, Regol et al. 2024, do in their ways).

Protocol: the validation split is cut in two halves by a seeded permutation (`halves`); the policy is
fitted on the first, its threshold is swept and calibrated on the second, and test is read once at the
threshold validation chose (repro.sweep does the sweeping; the fitted criterion appears there as
`fitted-gate` or `fitted-features`).

Each early exit b gets its own logistic score s_b = sigmoid(w_b . phi_b + c_b) over four features of its
output (`exit_features`): top probability, margin between the top two probabilities, 1 - normalised
entropy, and whether its top class agrees with exit b-1's (0 at the first exit). The two policies differ
in what they are trained for:

- `gate`: the paper's own objective, with s_b as the gate: the soft output f~_b = s_b f_b + (1 - s_b)
  f~_{b+1} and its expected cost built by the same recursion, loss = NLL(f~_1) + lambda x cost / plain
  MACs. Unlike the paper's gate, which reads the exit's feature map, this one reads the exit's output, so
  that it applies to any trained network (bnet's too) from outputs.pt alone.
- `features`: supervised on whether leaving at b loses nothing against the final exit (b is right, or the
  final exit is wrong too), by binary cross-entropy in which each sample that could leave at b without loss
  weighs 1 + lambda x the fraction of the plain network's MACs leaving there saves (so lambda makes leaving
  early more attractive where it saves more; each exit has its own weights, so a weight on every sample of
  an exit alike would change nothing).

In both, cost is counted in the plain network's MACs, the unit of the report's budgets; method proposed
counts it in the final exit's cumulative MACs (the plain network plus every early head: 1.16x plain for
VGG-13 with three exits, 1.72-1.78x with nine), so the same lambda weighs cost that much less there.

Both are fitted by full-batch L-BFGS in float64 from zero weights (no randomness but the halves' seed), with
a small L2 penalty so that a separable case still has one answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from repro import criteria
from repro.errors import ReproError, check_name

POLICIES = ("gate", "features")
DEFAULT_COST_WEIGHT = 0.1  # lambda of the policies' objective: method proposed's default
CRITERION_PREFIX = "fitted-"  # the criterion a fitted policy appears as in sweep.csv: fitted-gate, fitted-features
FEATURES = ("top_probability", "margin", "confidence", "agrees_with_previous")  # confidence = 1 - normalised entropy
L2 = 1e-4  # on the standardised features' weights
MAX_ITERATIONS = 500


def criterion_name(policy: str) -> str:
    return CRITERION_PREFIX + policy


def halves(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, calibration indices): a seeded permutation of the validation samples cut in two
    (the fit half gets the extra one of an odd count), each sorted."""
    if num_samples < 4:
        raise ReproError(f"fitting an exit policy needs at least 4 validation samples, not {num_samples}")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    cut = (num_samples + 1) // 2
    return order[:cut].sort().values, order[cut:].sort().values


def halves_digest(fit: torch.Tensor, targets: torch.Tensor) -> str:
    """sha256 of the fit half's indices and of every validation target: equal sizes alone would not show a
    permutation that changed (a PyTorch whose randperm differs) or validation data that did."""
    digest = hashlib.sha256()
    digest.update(fit.to(torch.int64).numpy().tobytes())
    digest.update(targets.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()


def exit_features(logits: torch.Tensor) -> torch.Tensor:
    """float64 [E-1, N, 4] from every exit's logits [E, N, C]: the features of FEATURES at each early exit."""
    early = logits[:-1].double()
    top2 = torch.softmax(early, dim=-1).topk(min(2, early.shape[-1]), dim=-1).values
    top = top2[..., 0]
    margin = top - top2[..., 1] if top2.shape[-1] > 1 else top
    confidence = 1.0 - criteria.normalised_entropy(early)
    predicted = early.argmax(dim=-1)
    agrees = torch.zeros_like(top)
    agrees[1:] = (predicted[1:] == predicted[:-1]).double()
    return torch.stack([top, margin, confidence, agrees], dim=-1)


@dataclass(frozen=True)
class FittedPolicy:
    policy: str  # gate | features
    cost_weight: float  # lambda
    seed: int  # of the validation halves
    mean: torch.Tensor  # float64 [E-1, F]: the fit half's feature means, per exit
    std: torch.Tensor  # float64 [E-1, F]
    weight: torch.Tensor  # float64 [E-1, F]
    bias: torch.Tensor  # float64 [E-1]
    loss: float  # the objective at the fitted weights, on the fit half
    fit_samples: int
    calibration_samples: int

    halves_sha256: str | None = None  # of the fit half's indices and every validation target (halves_digest); None: not recorded

    @property
    def criterion(self) -> str:
        return criterion_name(self.policy)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """float64 [E-1, N] in (0, 1): the policy's score at each early exit; a sample leaves at or above t."""
        return torch.sigmoid(_logit(exit_features(logits), self.mean, self.std, self.weight, self.bias))

    def to_dict(self) -> dict:
        return {"policy": self.policy, "cost_weight": self.cost_weight, "seed": self.seed, "features": list(FEATURES),
                "mean": self.mean.tolist(), "std": self.std.tolist(), "weight": self.weight.tolist(),
                "bias": self.bias.tolist(), "loss": self.loss, "fit_samples": self.fit_samples,
                "calibration_samples": self.calibration_samples, "halves_sha256": self.halves_sha256}

    @classmethod
    def from_dict(cls, data: dict) -> "FittedPolicy":
        """The inverse of to_dict; KeyError / ValueError / TypeError on a malformed dict (the caller says which file)."""
        check_name("policy", data["policy"], POLICIES)
        if list(data["features"]) != list(FEATURES):
            raise ValueError(f"features {data['features']} are not {list(FEATURES)}")
        tensors = {key: torch.tensor(data[key], dtype=torch.float64) for key in ("mean", "std", "weight", "bias")}
        exits, width = tensors["weight"].shape
        if width != len(FEATURES) or tensors["mean"].shape != (exits, width) or tensors["std"].shape != (exits, width) \
                or tensors["bias"].shape != (exits,) or not all(t.isfinite().all() for t in tensors.values()):
            raise ValueError("weights of inconsistent shapes or not finite")
        return cls(data["policy"], float(data["cost_weight"]), int(data["seed"]), **tensors, loss=float(data["loss"]),
                   fit_samples=int(data["fit_samples"]), calibration_samples=int(data["calibration_samples"]),
                   halves_sha256=None if data.get("halves_sha256") is None else str(data["halves_sha256"]))


def _logit(features, mean, std, weight, bias) -> torch.Tensor:
    return (((features - mean[:, None]) / std[:, None]) * weight[:, None]).sum(dim=-1) + bias[:, None]


def soft_output_objective(gates: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, relative_cost: torch.Tensor,
                          cost_weight: float) -> torch.Tensor:
    """The paper's loss for gates [E-1, N]: mean NLL of the soft output's target probability plus lambda x the
    mean expected cost (relative_cost [E]: each exit's cumulative MACs over the plain network's)."""
    probability = torch.softmax(logits.double(), dim=-1).gather(-1, targets[None, :, None].expand(logits.shape[0], -1, 1))[..., 0]
    reach = torch.cumprod(torch.cat([torch.ones_like(gates[:1]), 1.0 - gates]), dim=0)  # [E, N]: reaching exit b
    leave = torch.cat([reach[:-1] * gates, reach[-1:]])  # [E, N]: leaving at exit b
    soft = (leave * probability).sum(dim=0)
    cost = (leave * relative_cost[:, None]).sum(dim=0)
    return -torch.log(soft.clamp_min(1e-300)).mean() + cost_weight * cost.mean()


def lossless_exit_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float64 [E-1, N]: 1 where leaving at early exit b loses nothing against the final exit (b is right, or
    the final exit is wrong too)."""
    correct = logits.argmax(dim=-1) == targets[None]
    return (correct[:-1] | ~correct[-1:]).double()


def fit_policy(policy: str, logits: torch.Tensor, targets: torch.Tensor, exit_macs: torch.Tensor, plain_macs: float,
               cost_weight: float, seed: int, calibration_samples: int = 0, halves_sha256: str | None = None) -> FittedPolicy:
    """Fit `policy` on these samples (the fit half): logits [E, N, C], targets [N], exit_macs [E] cumulative;
    halves_sha256 records which half it was (halves_digest), for policy_splits to check."""
    check_name("policy", policy, POLICIES)
    if logits.shape[0] < 2:
        raise ReproError("the run has no early exits (one classifier): there is no exit decision to fit")
    if not cost_weight >= 0:
        raise ReproError(f"--lambda must be 0 or more, not {cost_weight}")
    features = exit_features(logits)
    mean = features.mean(dim=1)
    std = features.std(dim=1, unbiased=False).clamp_min(1e-6)  # a constant feature (agreement at exit 1) stays 0
    relative_cost = exit_macs.double() / float(plain_macs)
    exits = features.shape[0]
    weight = torch.zeros(exits, len(FEATURES), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(exits, dtype=torch.float64, requires_grad=True)
    if policy == "gate":
        def objective():
            gates = torch.sigmoid(_logit(features, mean, std, weight, bias))
            return soft_output_objective(gates, logits, targets, relative_cost, cost_weight)
    else:
        wanted = lossless_exit_targets(logits, targets)
        saving = (relative_cost[-1] - relative_cost[:-1]).clamp_min(0.0)  # [E-1]
        sample_weight = 1.0 + cost_weight * saving[:, None] * wanted  # only leaving is rewarded for what it saves

        def objective():
            raw = _logit(features, mean, std, weight, bias)
            return torch.nn.functional.binary_cross_entropy_with_logits(raw, wanted, weight=sample_weight)

    def penalised():
        return objective() + L2 * weight.pow(2).sum()

    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=MAX_ITERATIONS, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = penalised()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        loss = float(objective())
    return FittedPolicy(policy, float(cost_weight), int(seed), mean, std, weight.detach().clone(), bias.detach().clone(),
                        loss, int(targets.shape[0]), int(calibration_samples), halves_sha256)


def policy_splits(policy: FittedPolicy, splits: dict) -> dict:
    """The splits a fitted policy is swept on, as repro.sweep.SplitOutputs with its scores as the gates: the
    validation half it was not fitted on (where its threshold is chosen) and the whole test split."""
    from repro.sweep import SplitOutputs

    val, test = splits["val"], splits["test"]
    fit, calibration = halves(val.num_samples, policy.seed)
    if (len(fit), len(calibration)) != (policy.fit_samples, policy.calibration_samples):
        raise ReproError(f"the {policy.criterion} policy was fitted on {policy.fit_samples} of "
                         f"{policy.fit_samples + policy.calibration_samples} validation samples, but outputs.pt has "
                         f"{val.num_samples}; fit it again with `repro fit-gates`")
    if policy.halves_sha256 is not None and policy.halves_sha256 != halves_digest(fit, val.targets):
        raise ReproError(f"the {policy.criterion} policy was fitted on another half of validation than seed "
                         f"{policy.seed} cuts from outputs.pt now (other samples or another PyTorch's permutation); "
                         "fit it again with `repro fit-gates`")
    held_out = SplitOutputs(val.logits[:, calibration], policy.scores(val.logits[:, calibration]), val.targets[calibration])
    return {"val": held_out, "test": SplitOutputs(test.logits, policy.scores(test.logits), test.targets)}
