"""The decision rule of results/fair/README.md, applied to the committed cells: prints verdict.md.

    python results/fair/verdict.py > results/fair/verdict.md

The rule was committed before any cell of the study finished; this script only reads it off the numbers.
Every accuracy is the report's equal-cost figure (repro.report.tables.accuracy_at_budget: the most accurate
validation point of a criterion within the budget, read on test), mean over a setting's runs. Where a
setting has one run, its seed spread is not measured: δ then takes results/cpu's two seeds of bnet
(entropy) and proposed (its gate) at that budget, pooled, as the rule says. tests/test_committed_results.py
checks that verdict.md is what this script prints from the committed files.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository's repro, also without an install

from repro.report.collect import collect  # noqa: E402
from repro.report.tables import accuracy_at_budget  # noqa: E402

BUDGETS = (0.4, 0.6, 0.8)
CPU = HERE.parent / "cpu"
# recipe: (bnet's runs, proposed's runs), folders relative to results/fair; a comparison is left out until
# its proposed runs are committed.
RECIPES = {
    "modern recipe": (["modern-bnet", "modern-seed1-bnet", "modern-split1-bnet"],
                      ["modern-proposed", "modern-seed1-proposed", "modern-split1-proposed"]),
    "report recipe, stopping on the objective": (["../cpu/bnet-cifar10-jpeg", "../cpu/second-seed-bnet"], ["report-objective"]),
    "report recipe, three exits": (["three-exits-bnet"], ["three-exits-proposed"]),
    "report recipe, full width": (["../cpu/full-width-bnet"], ["full-width-proposed"]),
    "report recipe (results/cpu, for reference)": (["../cpu/bnet-cifar10-jpeg", "../cpu/second-seed-bnet"],
                                                   ["../cpu/proposed-cifar10-jpeg", "../cpu/second-seed-proposed"]),
}
LITERAL = {"modern recipe": ("modern-literal", "modern-bnet"), "report recipe, three exits": ("three-exits-literal", "three-exits-bnet")}
SPREAD_RUNS = (["../cpu/bnet-cifar10-jpeg", "../cpu/second-seed-bnet"], "entropy"), \
              (["../cpu/proposed-cifar10-jpeg", "../cpu/second-seed-proposed"], "gate")


def runs(names: list[str]) -> list:
    """The finished, committed runs among `names` (missing or unfinished ones are left out)."""
    found = [HERE / name for name in names if (HERE / name / "config.json").is_file()]
    return [run for run in collect(found).runs if run.finished] if found else []


def points(group: list, criterion: str, budget: float, split: str = "test") -> list[float | None]:
    """Each run's equal-cost accuracy (points) on `split` (val: the chosen point's own validation figure); None
    where no threshold is that cheap."""
    return [None if (a := accuracy_at_budget(run, criterion, budget, split)) is None else 100 * a for run in group]


def mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def pooled_std(*settings: list[float | None]) -> float | None:
    """Sample standard deviation pooled over the settings with two or more values; None if none has."""
    squares, dof = 0.0, 0
    for values in settings:
        values = [v for v in values if v is not None]
        if len(values) >= 2:
            m = sum(values) / len(values)
            squares += sum((v - m) ** 2 for v in values)
            dof += len(values) - 1
    return math.sqrt(squares / dof) if dof else None


def cpu_spread(budget: float) -> float:
    settings = [points(runs(names), criterion, budget) for names, criterion in SPREAD_RUNS]
    return pooled_std(*settings) or 0.0


def delta(budget: float, *settings: list[float | None]) -> float:
    """The rule's δ: max(0.5, 2 x pooled seed std) where a setting has two runs; else 0.5 + results/cpu's spread."""
    std = pooled_std(*settings)
    return max(0.5, 2 * std) if std is not None else 0.5 + cpu_spread(budget)


def at_or_above(value: float | None, reference: float | None, margin: float) -> bool:
    """value >= reference - margin; no operating point is below, a reference without one is beaten (so
    neither having one counts as at or above: nothing there to lose)."""
    if reference is None:
        return True
    return value is not None and value >= reference - margin


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def cell(group: list, criterion: str, budget: float) -> str:
    """'test mean ± std (val mean)', the std only where the group has two or more runs with a point."""
    test, val = points(group, criterion, budget), points(group, criterion, budget, "val")
    if mean(test) is None:
        return "—"
    std = pooled_std(test)
    return fmt(mean(test)) + (f" ± {std:.2f}" if std is not None else "") + f" (val {fmt(mean(val))})"


def claim(bnet: list, proposed: list) -> tuple[list[str], str]:
    """The table rows and the outcome of the paper's comparison: proposed's gate against bnet's entropy."""
    rows, below = [], 0
    for budget in BUDGETS:
        reference, method = points(bnet, "entropy", budget), points(proposed, "gate", budget)
        margin = delta(budget, reference, method)
        ok = at_or_above(mean(method), mean(reference), margin)
        below += not ok
        rows.append(f"| {budget:g} | {cell(bnet, 'entropy', budget)} | {cell(proposed, 'gate', budget)} | {margin:.2f} | "
                    f"{'at or above' if ok else 'below'} |")
    outcome = "reproduced" if below == 0 else "not reproduced" if below >= 2 else "inconclusive"
    return rows, outcome


def diagnosis(network: list, learned_gate: bool = True) -> tuple[list[str], list[str]]:
    """On one method's own networks (proposed's, with its learned gate; bnet's, without): every criterion,
    and the rule's readings against entropy on the same weights."""
    criteria = ("entropy", "maxprob", *(["gate"] if learned_gate else []), "fitted-gate", "fitted-features")
    rows, below, above = [], {"gate": 0, "fitted-gate": 0}, {"fitted-gate": 0, "fitted-features": 0}
    for budget in BUDGETS:
        values = {c: points(network, c, budget) for c in criteria}
        m = {c: mean(v) for c, v in values.items()}
        best_confidence = max((v for v in (m["entropy"], m["maxprob"]) if v is not None), default=None)
        margins = {}  # each comparison's own δ, from the two numbers it compares (the rule's wording)
        for policy in below:
            if policy in m:
                margins[policy] = delta(budget, values[policy], values["entropy"])
                below[policy] += not at_or_above(m[policy], m["entropy"], margins[policy])
        for policy in above:
            margin = delta(budget, values[policy], values["entropy"], values["maxprob"])
            margins.setdefault(policy, margin)
            above[policy] += None not in (m[policy], best_confidence) and m[policy] > best_confidence + margin
        margins["fitted-features"] = delta(budget, values["fitted-features"], values["entropy"], values["maxprob"])
        shown = " / ".join(f"{margins[c]:.2f}" for c in ("gate", "fitted-gate", "fitted-features") if c in margins)
        rows.append(f"| {budget:g} | " + " | ".join(cell(network, c, budget) for c in criteria) + f" | {shown} |")
    readings = []
    if learned_gate and below["gate"] <= 1:
        readings.append("the learned gate reaches entropy − δ on its own network")
    if not any(run.sweep is not None and "fitted-gate" in set(run.sweep["criterion"]) for run in network):
        return rows, readings + ["no fitted policies in these runs (committed without outputs.pt, trained before fit-gates)"]
    if learned_gate and below["fitted-gate"] <= 1 and below["gate"] >= 2:
        readings.append("the gate's end-to-end training fails (fitted on held-out data, its objective reaches entropy − δ)")
    if below["fitted-gate"] >= 2:
        readings.append("the gate's objective loses as an exit rule (fitted on held-out data too)")
    readings.append("a learned exit policy wins (fitted-features above entropy and maxprob + δ at two budgets or more)"
                    if above["fitted-features"] >= 2 else
                    "no learned exit policy wins (fitted-features not above entropy and maxprob + δ at two budgets)")
    readings.append(f"beyond the rule: fitted-gate is above entropy and maxprob + δ at {above['fitted-gate']} of 3 budgets")
    return rows, readings


def literal(cell: str, bnet_cell: str) -> str | None:
    (run,) = runs([cell]) or [None]
    (reference,) = runs([bnet_cell]) or [None]
    if run is None or reference is None or run.eval is None or reference.eval is None:
        return None
    point = run.eval["operating_point"]
    if point["criterion"] != "gate" or set(point["thresholds"]) != {0.5}:
        return f"`{cell}`: its operating point is not the learned gate at 0.5 ({point['how']}); the rule cannot be read"
    at_exit_1 = point["test"]["exit_fractions"][0]
    final, bnet_final = run.eval["test"]["final_accuracy"], reference.eval["test"]["final_accuracy"]
    state = "collapses" if at_exit_1 >= 0.9 and final < 0.15 else "trains" if final >= bnet_final - 0.05 else "neither"
    return (f"`{cell}`: at gate {point['thresholds'][0]:g}, {at_exit_1:.1%} of test images leave at exit 1; final exit "
            f"{final:.2%} (bnet's {bnet_final:.2%}): **{state}**")


def main() -> None:
    out = ["# The fair test's verdict, by its decision rule", "",
           "Printed by `python results/fair/verdict.py` from the committed cells (README.md beside it states the rule). "
           "Test accuracy (%) at each budget (x the plain network's MACs), thresholds chosen on validation; mean over a "
           "setting's runs (± the seed std where it has two or more), the chosen point's validation accuracy in brackets "
           "(it decides nothing); δ in points: the larger of 0.5 and twice the seed standard deviation pooled over the settings "
           "compared that have two or more runs, else 0.5 plus results/cpu's two-seed spread (bnet's entropy and "
           "proposed's gate, pooled) at that budget. Paths are under results/.", ""]
    for recipe, (bnet_names, proposed_names) in RECIPES.items():
        bnet, proposed = runs(bnet_names), runs(proposed_names)
        if not bnet or not proposed:
            out += [f"## {recipe}", "", "Not yet: " + ", ".join(n for n in bnet_names + proposed_names
                                                               if not runs([n])) + " not committed.", ""]
            continue
        rows, outcome = claim(bnet, proposed)
        absent = [n for n in bnet_names + proposed_names if not runs([n])]
        names = lambda group: ", ".join(f"`{Path(run.path).resolve().relative_to(HERE.parent)}`" for run in group)  # noqa: E731
        pending = f" Not yet committed, so not in these numbers: {', '.join(absent)}." if absent else ""
        out += [f"## {recipe}: {outcome}", "", f"bnet: {names(bnet)}; proposed: {names(proposed)}.{pending}", "",
                "| budget | bnet, entropy | proposed, its gate | δ | proposed vs bnet − δ |", "| --- | ---: | ---: | ---: | --- |",
                *rows, "", "On proposed's own network (the same weights, only the exit rule differs):", "",
                "| budget | entropy | maxprob | learned gate | fitted-gate | fitted-features | δ: gate / fitted-gate vs entropy, features vs both |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        table, readings = diagnosis(proposed)
        out += [*table, "", *[f"- {reading}" for reading in readings], ""]
        table, readings = diagnosis(bnet, learned_gate=False)
        out += ["On bnet's own network:", "", "| budget | entropy | maxprob | fitted-gate | fitted-features | δ: fitted-gate vs entropy, features vs both |",
                "| --- | ---: | ---: | ---: | ---: | ---: |", *table, "", *[f"- {reading}" for reading in readings], ""]
    lines = [line for cell, bnet_cell in LITERAL.values() if (line := literal(cell, bnet_cell))]
    out += ["## The literal loss (`--joint-weight 0`)", "", *([f"- {line}" for line in lines] or ["Not yet committed."]), ""]
    print("\n".join(out).rstrip())


if __name__ == "__main__":
    main()
