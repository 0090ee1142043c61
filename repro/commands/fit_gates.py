"""`repro fit-gates RUN [RUN...]`: exit decisions fitted on held-out data after training (repro.exit_policy)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from repro.console import cli_errors, console, say

BUDGETS = (0.4, 0.6, 0.8)  # fractions of the plain network's MACs, as in the report's equal-cost tables


@cli_errors
def fit_gates(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Run directories, or folders to search for runs.", show_default=False)],
    policy: Annotated[str, typer.Option("--policy", help="gate: the paper's objective (soft-output NLL + lambda x cost) "
                                        "on a gate over each exit's output; features: a policy trained on whether "
                                        "leaving loses nothing; all: both.")] = "all",
    cost_weight: Annotated[float, typer.Option("--lambda", help="Weight of the compute cost, as a fraction of the "
                                               "plain network's MACs, in the policy's objective (0: accuracy only; the "
                                               "threshold sweep sets the trade-off either way). 0.1 is method "
                                               "proposed's default, whose cost is a fraction of the final exit's MACs.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the permutation that cuts validation into the fit "
                                      "half and the calibration half.")] = 0,
):
    """Freeze a trained network and fit only its exit decision, on half of validation; its threshold is swept
    on the other half and test is read at the threshold chosen there. Needs RUN/outputs.pt (`repro eval RUN`
    writes it from checkpoint.pt). Writes exit_policies.json and sweeps again (default thresholds): the
    policies appear in sweep.csv and the reports as criteria fitted-gate and fitted-features."""
    from repro import rundir, steps
    from repro.errors import ReproError, check_name
    from repro.exit_policy import POLICIES
    from repro.sweep import NoEarlyExits

    check_name("policy", policy, (*POLICIES, "all"))
    if not 0 <= seed < 2**63:  # within torch.Generator.manual_seed's range (and not negative), so a bad seed is a line, not a traceback
        raise ReproError(f"--seed must be between 0 and 2^63 - 1, not {seed}")
    if not cost_weight >= 0 or cost_weight == float("inf"):
        raise ReproError(f"--lambda must be a finite number, 0 or more, not {cost_weight}")
    policies = list(POLICIES) if policy == "all" else [policy]
    found = rundir.find_runs(runs)
    for run in found:
        if not run.has(rundir.OUTPUTS):
            message = (f"run {run.path} has no {rundir.OUTPUTS}, which fit-gates reads: " +
                       (f"write it with `repro eval {run.path}`" if run.has(rundir.CHECKPOINT) else
                        f"nor the {rundir.CHECKPOINT} `repro eval` writes it from (a committed results folder keeps "
                        "neither); train the run again"))
            if len(found) == 1:
                raise ReproError(message)
            say(f"[yellow]skipped {run.path}:[/] {message}")
            continue
        try:
            fitted, result = steps.fit_gates_run(run, policies, cost_weight, seed)
        except NoEarlyExits as error:
            if len(found) == 1:
                raise ReproError(f"run {run.path}: {error}; there is no exit decision to fit") from None
            say(f"[yellow]skipped {run.path}:[/] {error}")
            continue
        console.print(budget_table(run.name, result, fitted))
        say(f"wrote {run.file(rundir.EXIT_POLICIES)} and {run.file(rundir.SWEEP)}")


def budget_table(name: str, result, fitted: dict):
    """Every criterion of the sweep at each budget: the validation point chosen and its test accuracy."""
    from rich.table import Table

    from repro.sweep import best_within_budget

    some = next(iter(fitted.values()))
    table = Table(title=f"{name}: test accuracy at equal cost, thresholds chosen on validation",
                  caption=f"fitted policies: thresholds chosen on the {some.calibration_samples} validation samples they "
                          f"were not fitted on ({some.fit_samples}); the others on all of validation. "
                          f"Final exit: {result.final_accuracy['test']:.2%} test.")
    table.add_column("criterion")
    for budget in BUDGETS:
        table.add_column(f"{budget:g}x MACs", justify="right")
    criteria = sorted({criterion for _, criterion in result.points}, key=lambda c: (c.startswith("fitted-"), c))
    for criterion in criteria:
        cells = []
        for budget in BUDGETS:
            best = best_within_budget(result, criterion, budget)
            cells.append("—" if best is None else f"{best[1]:.2%} (val {best[0]:.2%})")
        table.add_row(criterion, *cells)
    return table
