"""`repro demo`'s pipeline (train -> eval --timing -> sweep --max-drop -> report) on real, tiny runs.

A shrunken demo (3 methods, 200 training images, 1 epoch) checks that the report reads what the other
commands really write: the tables hold numbers equal to the runs' own eval.json, and every figure is a PNG.
"""

from __future__ import annotations

import pytest

from repro import rundir
from repro.demo import DemoConfig, run_demo
from repro.report.collect import collect
from repro.report.figures import FIGURES
from repro.report.references import load_references
from repro.report.tables import table1, table2
from test_report import PNG_SIGNATURE


@pytest.mark.slow
def test_small_demo_reports_what_the_runs_hold(tmp_path):
    lines = []
    config = DemoConfig(runs=tmp_path / "runs", out=tmp_path / "report", methods=("baseline", "bnet", "proposed"),
                        subset=200, epochs=1, timing_images=8)
    result = run_demo(config, log=lines.append)
    assert len(result.runs) == 3 and any(line.startswith("swept bnet") for line in lines)
    assert result.report.missing == []  # every run has every file it can have (the baseline has no sweep)
    tables = table1(collect([tmp_path / "runs"]), load_references())
    (t1,) = [t for t in tables if t.caption == "VGG-13 · synthetic"]  # beside the reference's own (placeholder) tables
    for path in result.runs:
        evaluation = rundir.read_json(path / rundir.EVAL)
        method = evaluation["method"]
        assert t1.cell(method, "Final exit (%)").text == f"{evaluation['test']['final_accuracy'] * 100:.2f}"
        timing = rundir.read_json(path / rundir.TIMING)
        (t2,) = [t for t in table2(collect([tmp_path / "runs"]), load_references()) if t.caption == "VGG-13 · synthetic"]
        assert t2.cell(method, "Latency (ms)").text.startswith(f"{timing['batch1']['early_exit']['mean_ms']:.3f}")
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) for path in result.report.figures)
    # Every figure: the routing one too (proposed mixes a soft output), and each method on its own criterion.
    assert sorted(path.name for path in result.report.figures) == sorted(FIGURES)
    html = result.report.html.read_text()
    assert "Table 1: test accuracy without early exit" in html and "Table 2: early exit at the operating point" in html
