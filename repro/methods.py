"""Training methods for multi-exit networks: each method is a loss over the model's outputs.

One training loop (repro.trainer) serves every method (STYLE.md, principle 4). A method turns a
`MultiExitOutput` (logits of every exit, shallow to final, and the learned gates of the early exits) into
a scalar loss and a few logged terms, and says how its own output and its exit criterion are defined.
Exits are indexed b = 0..E-1 (E-1 is the final classifier); c_b is the cumulative cost of leaving at
exit b divided by the final exit's (`model.costs.relative()`, so c_{E-1} = 1).

- `baseline`: the network without exits (built with exits=[]), cross-entropy on its only output.
- `bnet` (BranchyNet, Teerapittayanon et al. 2016): sum_b alpha_b CE(f_b); alphas default to all 1.
  Inference criterion: normalised entropy (entropy / log C) at or below a threshold.
- `proposed` (Scardapane et al., ICASSP 2020, Eqs. 4-7): learned gates g_b in (0, 1); a soft output
  built from the final classifier back to exit 0,
      f~_{E-1} = f_{E-1},   f~_b = g_b f_b + (1 - g_b) f~_{b+1},
  and an expected cost built the same way,
      C~_{E-1} = 1,         C~_b = g_b c_b + (1 - g_b) C~_{b+1};
  loss = NLL(f~_0) + lambda * mean_batch(C~_0) [+ w * sum_b CE(f_b) with `joint_weight` w].
  Inference criterion: gate at or above a threshold.
- `report-proposed` (the reproduction report's "Proposed"): no learned gate; g_b = 1 - normalised
  entropy of f_b; soft output NLL + joint per-exit CE (w = 1 by default). Criterion: entropy.
- `report-maxprob` (the report's "Prop+DifferentCriterion"): g_b = top softmax probability of f_b;
  soft output NLL + joint per-exit CE. Criterion: top probability.

Choices the paper leaves open, and how they are made here (each alternative is one option away):
- What is mixed (`mix`). Default "probs": f_b are the exits' class probabilities, as the paper's
  equations read (a mixture of classifiers, so f~_0 is a proper distribution). It is computed in log
  space, log f~_b = logsumexp(log g_b + log_softmax(f_b), log(1 - g_b) + log f~_{b+1}), so it cannot
  underflow, with log g and log(1 - g) taken as logsigmoid(+-z) of the gate's logit z when the model
  exposes one (`gate_logits`), else as the log of the gate clamped to [1e-12, 1]. `mix="logits"` mixes
  the raw logits instead and applies softmax to f~_0 (as one implementation from the authors' lab did).
- The cost weight lambda (`cost_weight`), default 0.1. Not tuned; chosen by reading the loss's units:
  the cost term is a fraction of the full network's MACs in [c_0, 1], the soft-output NLL is in nats,
  so lambda is "nats of NLL the network would give up to save all of its compute". For VGG-13 with
  the report's nine exits, C~_0 at initialisation (gates near 0.5) is 0.31, so the cost term starts at
  0.03 against an NLL of log 10 = 2.3 nats: it tips the balance between exits that classify about
  equally well instead of dominating the loss. A lambda that made the two terms equal at
  initialisation (about 7) would pay 7 x (1 - 0.18) = 5.7 nats for moving a sample from the final
  exit to exit 0 (c_0 = 0.18), more than any realistic NLL gap between the two, so every sample would
  be pushed out at exit 0. 0.1 was not tuned on any data set; sweep `--cost-weight` to trade accuracy
  for cost.
- `joint_weight` w (sum of per-exit CE added to the soft-output loss). Default 1 for every soft-output
  method. The paper's loss has no such term, and `proposed` without it (w = 0, the literal loss,
  `LITERAL_LOSS`) collapses: the first exit learns fastest, every gate opens onto it, and the deeper
  exits, the final one included, stay at chance (measured in results/gates/screen: 99.95% of CIFAR-10
  test images leave at exit 1, exits 3-10 at 10.0%). With w = 1 every exit trains and the gates start
  to discriminate once the deep exits overtake the first (the report's variants train the same way).
- Whether the report variants' confidence gates are detached (`detach_confidence`), default False:
  the point of the soft output is that its gradient reaches the confidence, so an exit is rewarded for
  being confident where it is right and unsure where it is wrong; detaching turns the soft-output term
  into a per-sample weighted CE that cannot shape the confidences. With it False, a network could
  lower the soft-output term by making early exits uniformly unsure; the joint per-exit CE (w = 1)
  is what prevents that. `--detach-confidence` reproduces the detached reading.
- Label smoothing (`label_smoothing` eps, default 0) applies to every CE/NLL term alike:
  (1 - eps) * (-log p_y) + eps * mean_c(-log p_c).
- Logged "gate" per early exit and the expected cost (`cost_vs_final`: a fraction of the final exit's
  MACs, the regulariser's unit): the g_b each method mixes with (learned gate; 1 - normalised entropy;
  top probability). `bnet` mixes nothing, so it reports the same quantities with its criterion's
  confidence, 1 - normalised entropy; `baseline` has no gates and cost 1.

The three soft-output methods are one class, `SoftOutputMethod`, told apart by their confidence function
(`learned_gate`, `one_minus_entropy`, `top_probability`): the recursion, the mixing and the joint term
are written once.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from repro.criteria import max_probability, normalised_entropy
from repro.errors import ReproError, check_name

MIXES = ("probs", "logits")
STOP_ON = ("loss", "objective")  # what a soft-output method's early stopping watches (SoftOutputMethod.stop_on)
# Floor for a gate value before taking its log when the gate's logit is not available: log(1e-12) = -27.6,
# far below any log-probability that matters and far above float32's smallest normal number.
GATE_FLOOR = 1e-12


def nll(log_probs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` under log-probabilities [N, C], optionally label-smoothed."""
    picked = -log_probs.gather(1, targets[:, None]).squeeze(1)
    if label_smoothing == 0.0:
        return picked.mean()
    return ((1.0 - label_smoothing) * picked - label_smoothing * log_probs.mean(dim=1)).mean()


class Confidence(NamedTuple):
    """One early exit's g_b [N] and its logs, log g_b and log(1 - g_b), each computed the stable way."""

    gate: torch.Tensor
    log_gate: torch.Tensor
    log_not_gate: torch.Tensor


def _clamped_logs(gate: torch.Tensor) -> Confidence:
    """log g and log(1 - g) of a gate known only by its value, each clamped to [GATE_FLOOR, 1] first."""
    g = gate.float()
    return Confidence(gate, g.clamp(GATE_FLOOR, 1.0).log(), (1.0 - g).clamp(GATE_FLOOR, 1.0).log())


def learned_gate(out, b: int) -> Confidence:
    """The paper's gate g_b = sigmoid(z_b): log g and log(1 - g) exactly, as logsigmoid(+-z) of its logit."""
    gate_logits = getattr(out, "gate_logits", None)
    if gate_logits is None:
        return _clamped_logs(out.gates[b])
    z = gate_logits[b].float()
    return Confidence(out.gates[b], F.logsigmoid(z), F.logsigmoid(-z))


def one_minus_entropy(out, b: int) -> Confidence:
    """The report's "Proposed" confidence: 1 - normalised entropy of exit b's softmax."""
    return _clamped_logs(1.0 - normalised_entropy(out.logits[b]))


def top_probability(out, b: int) -> Confidence:
    """The report's "Prop+DifferentCriterion" confidence: the top softmax probability of exit b.

    log p_top and log(1 - p_top) both in log space: 1 - p_top is the probability of every other class, a
    logsumexp of their log-probabilities. (log(-expm1(log p)) is -inf with a NaN gradient once p_top
    rounds to 1 in float32, i.e. for any logit gap above about 17.)
    """
    log_probs = torch.log_softmax(out.logits[b].float(), dim=1)
    log_p, top = log_probs.max(dim=1)
    others = log_probs.scatter(1, top[:, None], float("-inf"))
    log_not_p = torch.logsumexp(others, dim=1).clamp_min(math.log(GATE_FLOOR))
    return Confidence(max_probability(out.logits[b]), log_p, log_not_p)


def soft_log_probs(logits: Sequence[torch.Tensor], confidences: Sequence[Confidence]) -> torch.Tensor:
    """log f~_0 [N, C] of the probability mixture f~_b = g_b f_b + (1 - g_b) f~_{b+1}, in log space.

    logits: E tensors [N, C]; confidences: E-1 (g_b, log g_b, log(1 - g_b)), each [N].
    """
    log_soft = torch.log_softmax(logits[-1].float(), dim=1)
    for b in range(len(logits) - 2, -1, -1):
        here = confidences[b].log_gate[:, None] + torch.log_softmax(logits[b].float(), dim=1)
        later = confidences[b].log_not_gate[:, None] + log_soft
        log_soft = torch.logaddexp(here, later)
    return log_soft


def soft_logits(logits: Sequence[torch.Tensor], gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """f~_0 [N, C] of the logit mixture f~_b = g_b f_b + (1 - g_b) f~_{b+1} (`mix="logits"`)."""
    soft = logits[-1].float()
    for b in range(len(logits) - 2, -1, -1):
        g = gates[b].float()[:, None]
        soft = g * logits[b].float() + (1.0 - g) * soft
    return soft


def expected_cost(gates: Sequence[torch.Tensor], relative_costs: torch.Tensor) -> torch.Tensor:
    """C~_0 per sample [N]: C~_{E-1} = 1 and C~_b = g_b c_b + (1 - g_b) C~_{b+1} (c = relative cost)."""
    if not gates:
        return torch.ones(())  # a network without early exits always pays its full cost
    costs = relative_costs.to(gates[0].device, torch.float32)
    cost = torch.ones_like(gates[-1], dtype=torch.float32)
    for b in range(len(gates) - 1, -1, -1):
        g = gates[b].float()
        cost = g * costs[b] + (1.0 - g) * cost
    return cost


def routing_mass(gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """[E, N]: the probability of leaving at each exit under the soft output's recursion,
    m_b = g_b prod_{k<b} (1 - g_k) for the E-1 early exits, and prod_k (1 - g_k) for the final one (the
    weight each exit's f_b has in f~_0). Each column sums to 1."""
    remaining = torch.ones_like(gates[0], dtype=torch.float64)
    masses = []
    for gate in gates:
        g = gate.double()
        masses.append(g * remaining)
        remaining = remaining * (1.0 - g)
    return torch.stack([*masses, remaining])


def exit_cross_entropies(logits: Sequence[torch.Tensor], targets: torch.Tensor, label_smoothing: float) -> list[torch.Tensor]:
    return [nll(torch.log_softmax(f.float(), dim=1), targets, label_smoothing) for f in logits]


class Loss(NamedTuple):
    """What a method computes for one batch."""

    value: torch.Tensor  # the scalar to minimise
    terms: dict[str, torch.Tensor]  # logged terms, 0-dim and detached (no GPU sync until the trainer reads them)
    log_probs: torch.Tensor  # [N, C] the method's own output (f~_0 for soft-output methods, else the final exit)


@dataclass
class Method:
    """Base class: a loss over a MultiExitOutput, the method's own output, and its exit criterion."""

    name: ClassVar[str]
    criterion: ClassVar[str | None]
    uses_exits: ClassVar[bool] = True
    label_smoothing: float = 0.0  # eps of every CE/NLL term, in [0, 1)

    # -- the one thing each method defines
    def compute(self, out, targets: torch.Tensor, relative_costs: torch.Tensor) -> Loss:
        raise NotImplementedError

    def for_epoch(self, epoch: int) -> "Method":
        """The loss to train epoch `epoch` (0-based) with: itself, unless the method has a schedule."""
        return self

    def loss_phase(self, epoch: int) -> int:
        """Which loss epoch `epoch` trains with (a warm-up is phase 0): validation losses of different phases
        are not comparable, so early stopping starts afresh when the phase changes."""
        return 0

    @property
    def soft_output(self) -> bool:
        """Whether the method mixes its exits into one soft output (whose routing the trainer logs)."""
        return isinstance(self, SoftOutputMethod)

    def loss(self, out, targets: torch.Tensor, relative_costs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss to minimise, {term name: float}) for one batch."""
        result = self.compute(out, targets, relative_costs)
        return result.value, {name: float(value) for name, value in result.terms.items()}

    def confidence_gates(self, out) -> list[torch.Tensor]:
        """The g_b [N] (b = 0..E-2) this method mixes with, or reports for logging."""
        return [1.0 - normalised_entropy(f) for f in out.logits[:-1]]

    def method_log_probs(self, out) -> torch.Tensor:
        return torch.log_softmax(out.logits[-1].float(), dim=1)

    def method_probs(self, out) -> torch.Tensor:
        """Class probabilities [N, C] of the method's own output (f~_0 for soft-output methods, else the final exit)."""
        return self.method_log_probs(out).exp()

    def expected_cost(self, out, relative_costs: torch.Tensor) -> torch.Tensor:
        """Per-sample expected relative cost C~_0 [N] under this method's gates (1 without exits)."""
        gates = [g.detach() for g in self.confidence_gates(out)]
        if not gates:
            return torch.ones(out.logits[-1].shape[0], device=out.logits[-1].device)
        return expected_cost(gates, relative_costs)


@dataclass
class Baseline(Method):
    name: ClassVar[str] = "baseline"
    criterion: ClassVar[str | None] = None
    uses_exits: ClassVar[bool] = False

    def compute(self, out, targets, relative_costs):
        log_probs = self.method_log_probs(out)
        loss = nll(log_probs, targets, self.label_smoothing)
        return Loss(loss, {"ce_final": loss.detach()}, log_probs.detach())

    def confidence_gates(self, out):
        return []


@dataclass
class BranchyNet(Method):
    name: ClassVar[str] = "bnet"
    criterion: ClassVar[str | None] = "entropy"
    alphas: tuple[float, ...] | None = None  # weight of each exit's CE, shallow to final; None = all 1

    def compute(self, out, targets, relative_costs):
        exit_ce = exit_cross_entropies(out.logits, targets, self.label_smoothing)
        alphas = self.alphas if self.alphas is not None else (1.0,) * len(exit_ce)
        if len(alphas) != len(exit_ce):
            raise ReproError(f"bnet got {len(alphas)} alphas for a model with {len(exit_ce)} exits; give one per exit (final included)")
        loss = sum(a * ce for a, ce in zip(alphas, exit_ce))
        return Loss(loss, {f"ce_exit{b}": ce.detach() for b, ce in enumerate(exit_ce)}, self.method_log_probs(out).detach())


@dataclass
class SoftOutputMethod(Method):
    """`proposed` and the report's two variants: NLL of the soft output f~_0, mixed with each exit's
    confidence (`confidence`: learned_gate, one_minus_entropy or top_probability), plus the joint per-exit
    CE weighted by `joint_weight` and, for `proposed`, the expected-cost regulariser."""

    confidence: ClassVar[Callable]
    mix: str = "probs"  # "probs": mix class probabilities (log space); "logits": mix raw logits
    joint_weight: float = 0.0  # w of w * sum_b CE(f_b)
    joint_warmup: int = 0  # epochs trained on the per-exit CE alone, sum_b CE(f_b), before this loss
    final_weight: float = 0.0  # weight of the final exit's own CE, added to the loss
    # What early stopping and the checkpoint selection watch on validation (read by the trainer, not the loss):
    # "loss", the loss trained (the report's rule; with the joint loss mostly the per-exit CEs, so it picks
    # the epoch for the exits), or "objective", the method's own criterion without the per-exit terms:
    # NLL(f~_1) (+ lambda x expected cost for proposed), which picks the epoch for the exit decision.
    stop_on: str = "loss"
    warming_up = False  # not a field (no option): set on the copy `for_epoch` returns during the warm-up

    def loss_phase(self, epoch: int) -> int:
        return 0 if epoch < self.joint_warmup else 1

    def for_epoch(self, epoch: int) -> "SoftOutputMethod":
        """The loss of epoch `epoch` (0-based): the per-exit CE alone during the warm-up, then this one."""
        if epoch >= self.joint_warmup:
            return self
        phase = copy.copy(self)
        phase.warming_up = True
        return phase

    def confidences(self, out) -> list[Confidence]:
        return [type(self).confidence(out, b) for b in range(len(out.logits) - 1)]

    def confidence_gates(self, out):
        return [c.gate for c in self.confidences(out)]

    def method_log_probs(self, out):
        if self.mix == "logits":
            return torch.log_softmax(soft_logits(out.logits, self.confidence_gates(out)), dim=1)
        return soft_log_probs(out.logits, self.confidences(out))

    def extra_terms(self, out, relative_costs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.zeros((), device=out.logits[-1].device), {}

    def compute(self, out, targets, relative_costs):
        log_probs = self.method_log_probs(out)
        soft_nll = nll(log_probs, targets, self.label_smoothing)
        extra, terms = self.extra_terms(out, relative_costs)
        if self.warming_up:  # the per-exit CE alone; the soft output and the cost are logged, not trained
            exit_ce = exit_cross_entropies(out.logits, targets, self.label_smoothing)
            loss = sum(exit_ce)
        else:
            loss = soft_nll + extra
            if self.joint_weight:
                exit_ce = exit_cross_entropies(out.logits, targets, self.label_smoothing)
                loss = loss + self.joint_weight * sum(exit_ce)
            else:  # logged all the same (metrics.csv keeps its columns), without building their backward graph
                with torch.no_grad():
                    exit_ce = exit_cross_entropies(out.logits, targets, self.label_smoothing)
            if self.final_weight:
                final_ce = exit_ce[-1] if exit_ce[-1].requires_grad else nll(torch.log_softmax(out.logits[-1].float(), dim=1), targets, self.label_smoothing)
                loss = loss + self.final_weight * final_ce
        logged = {"soft_nll": soft_nll.detach(), **{name: value.detach() for name, value in terms.items()},
                  "objective": (soft_nll + extra).detach()}
        logged.update({f"ce_exit{b}": ce.detach() for b, ce in enumerate(exit_ce)})
        return Loss(loss, logged, log_probs.detach())


@dataclass
class Proposed(SoftOutputMethod):
    name: ClassVar[str] = "proposed"
    criterion: ClassVar[str | None] = "gate"
    confidence: ClassVar[Callable] = learned_gate
    cost_weight: float = 0.1  # lambda: nats of NLL per unit of relative cost (see the module docstring)
    joint_weight: float = 1.0  # the learned-gates study's fix; 0 is the paper's literal loss (module docstring)
    # Applied by the model builder (repro.rebuild), not by the loss: the gates' initial bias (0: gates start
    # near 0.5, the unbiased start the paper's equations imply) and whether gates read detached features.
    gate_bias: float = 0.0
    gate_detach: bool = False

    def extra_terms(self, out, relative_costs):
        cost = expected_cost(list(out.gates), relative_costs).mean()
        return self.cost_weight * cost, {"cost_vs_final": cost.detach()}


@dataclass
class ConfidenceSoftOutput(SoftOutputMethod):
    """The report's variants: the confidence is a function of the exit's own prediction, not a learned gate."""

    joint_weight: float = 1.0
    detach_confidence: bool = False  # stop the soft output's gradient at the confidence gates

    def confidences(self, out):
        confidences = super().confidences(out)
        if self.detach_confidence:
            return [Confidence(*(t.detach() for t in c)) for c in confidences]
        return confidences


@dataclass
class ReportProposed(ConfidenceSoftOutput):
    name: ClassVar[str] = "report-proposed"
    criterion: ClassVar[str | None] = "entropy"
    confidence: ClassVar[Callable] = one_minus_entropy


@dataclass
class ReportMaxProb(ConfidenceSoftOutput):
    name: ClassVar[str] = "report-maxprob"
    criterion: ClassVar[str | None] = "maxprob"
    confidence: ClassVar[Callable] = top_probability


_METHODS: dict[str, type[Method]] = {m.name: m for m in (Baseline, BranchyNet, Proposed, ReportProposed, ReportMaxProb)}


def list_methods() -> list[str]:
    return list(_METHODS)


def method_class(name: str) -> type[Method]:
    return _METHODS[check_name("method", name, _METHODS)]


def get_method(name: str, **options) -> Method:
    """The method `name` with its options (label_smoothing, alphas, mix, joint_weight, cost_weight,
    detach_confidence). Options a method does not use are an error: pass only the ones it takes
    (`TrainConfig.method_options` does)."""
    cls = method_class(name)
    accepted = method_option_names(name)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ReproError(f"method {name!r} takes no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted)) or 'none'}")
    options = {k: v for k, v in options.items() if v is not None}
    if "alphas" in options:
        options["alphas"] = tuple(float(a) for a in options["alphas"])
    if "mix" in options:
        check_name("mix", options["mix"], MIXES)
    if "stop_on" in options:
        check_name("stop on", options["stop_on"], STOP_ON)
    return cls(**options)


def method_option_names(name: str) -> set[str]:
    return {f.name for f in fields(method_class(name))}


def method_defaults(name: str) -> dict:
    """The value of each option method `name` takes when the user does not set it."""
    return {f.name: f.default for f in fields(method_class(name))}


# The paper's loss as its equations read (Scardapane et al. 2020): the soft output's NLL over a probability
# mixture and lambda x the expected cost, nothing else; gates start unbiased and read their features.
LITERAL_LOSS = {"mix": "probs", "joint_weight": 0.0, "final_weight": 0.0, "joint_warmup": 0, "gate_bias": 0.0,
                "gate_detach": False, "label_smoothing": 0.0}


def is_literal_loss(method: str, options: dict) -> bool:
    """Whether a `proposed` run with these options (its config.json) trained the paper's literal loss.
    Absent or None options are those of runs trained before config.json recorded the method's defaults
    (before an option existed, or when it was left to the method): back then they were the literal ones
    (TrainConfig.from_dict reads them so too)."""
    if method != "proposed":
        return False
    return all((value if options.get(key) is None else options[key]) == value for key, value in LITERAL_LOSS.items())
