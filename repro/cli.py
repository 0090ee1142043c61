"""The `repro` command line: train, eval, sweep, report, demo, and data management.

Each command lives in its own module under repro/commands/ and calls one library function.
"""

from __future__ import annotations

import typer

from repro.commands import data, demo, fit_gates, grid, report, sweep, train, verify
from repro.console import Command, Group
from repro.commands import eval as eval_command

app = typer.Typer(
    name="repro",
    cls=Group,
    help=(
        "Reproduce and extend 'Differentiable branching in deep networks for fast inference' "
        "(Scardapane et al., ICASSP 2020): train multi-exit networks (baseline, B-Net, the paper's "
        "differentiable gates, the reproduction report's variants), evaluate them, sweep exit thresholds, "
        "and render reports beside the published numbers."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command("train", cls=Command)(train.train)
app.command("eval", cls=Command)(eval_command.eval_command)
app.command("sweep", cls=Command)(sweep.sweep)
app.command("fit-gates", cls=Command)(fit_gates.fit_gates)
app.command("report", cls=Command)(report.report)
app.command("grid", cls=Command)(grid.grid)
app.command("demo", cls=Command)(demo.demo)
app.command("verify", cls=Command)(verify.verify)
app.add_typer(data.app, name="data", help="List, inspect, fetch and verify datasets.")
