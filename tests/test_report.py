"""`repro report` on hand-made, internally consistent run directories (no training).

The fake runs follow the contract schemas (config.json, metrics.csv, eval.json, timing.json, sweep.csv,
calibration.json): three seeds of one B-Net group, a B-Net run with another learning rate (never averaged
with them), baselines, a gated `proposed` run whose own output differs from its final exit, a
report-maxprob run without timing, a run named `<script>alert(1)`, a run on the CIFAR-10 JPEG
copy, and a run with nothing but its config. Expected numbers are computed by hand in the tests.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from pathlib import Path

import markupsafe
import pytest
from PIL import Image
from typer.testing import CliRunner

from repro import rundir
from repro.cli import app
from repro.report import build_report
from repro.report.collect import collect
from repro.report.figures import FIGURES, mean_front
from repro.report.references import builtin_references, load_references
from repro.report.render import markdown_escape
from repro.report.tables import routing_table, table1, table2, table2_exits, table3
from repro.rundir import SWEEP_SOURCE
from repro.timing import BATCH1_STATISTIC, IMAGES
from repro.artifacts import write_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A run directory's name cannot hold "/", so the closing tag cannot be part of it.
SCRIPT_NAME = "<script>alert(1)"
PLAIN_MACS = 100.0
EXIT_MACS = [20.0, 45.0, 75.0, 110.0]  # cumulative MACs of the 4 exits (final > plain: the heads cost extra)


def config(method: str, seed: int, dataset: str = "cifar10", lr: float = 5e-4, data_dir=None) -> dict:
    baseline = method == "baseline"
    return {
        "model": "vgg13", "method": method, "dataset": dataset, "data_dir": data_dir, "subset": None, "val_fraction": 0.2,
        "split_seed": 0, "recipe": "report", "seed": seed, "epochs": 3, "batch_size": 128, "optimizer": "adam",
        "lr": lr, "exits": [] if baseline else None, "batch_norm": False, "classifier": "report", "dropout": True,
        "head": "conv", "width": 1.0, "cost_weight": 0.1 if method == "proposed" else None, "joint_weight": 1.0 if method == "proposed" else None,
        "mix": None, "alphas": None, "detach_confidence": None, "num_classes": 10, "in_channels": 3, "image_size": 32,
    }


def point(accuracy: float, fractions: list[float]) -> dict:
    """An operating point consistent with EXIT_MACS: mean MACs = sum_b fraction_b * cost_b."""
    macs = EXIT_MACS[-len(fractions):] if len(fractions) > 1 else [PLAIN_MACS]
    mean_macs = sum(f * m for f, m in zip(fractions, macs))
    return {"accuracy": accuracy, "exit_fractions": fractions, "mean_macs": mean_macs, "macs_speedup": PLAIN_MACS / mean_macs}


def write_run(root: Path, name: str, cfg: dict, exit_accuracy: list[float], method_accuracy=None, op_accuracy=None,
              fractions=None, timing_ms=None, sweep=True, calibration=True) -> Path:
    """A run directory with every file the report reads; `timing_ms` = (plain, early exit) latencies or None."""
    run = rundir.RunDir(root / name)
    run.path.mkdir(parents=True)
    rundir.write_json(run.file(rundir.CONFIG), cfg)
    rundir.write_json(run.file(rundir.STATE), {"status": "finished", "epoch": 3, "epochs": 3, "stopped_early": False, "error": None})
    exits = len(exit_accuracy)
    metrics = []
    for epoch in range(1, 4):
        row = {"epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 2.2 / epoch}
        row.update({f"val_acc_exit{b}": exit_accuracy[b] * epoch / 3 for b in range(exits)})
        row.update({"val_acc_method": (method_accuracy or exit_accuracy[-1]) * epoch / 3, "lr": cfg["lr"], "seconds": 1.5})
        row["train_ce_exit%d" % (exits - 1) if exits > 1 else "train_ce_final"] = 2.0 / epoch
        if cfg["method"] in ("proposed", "report-proposed", "report-maxprob"):  # routing mass, summing to 1
            share = [0.5 / epoch] + [(1 - 0.5 / epoch) / (exits - 1)] * (exits - 1)
            row.update({f"route_exit{b}": share[b] for b in range(exits)})
        metrics.append(row)
    rundir.write_csv(run.file(rundir.METRICS), metrics)
    final = exit_accuracy[-1]
    fractions = fractions or ([1.0] if exits == 1 else [0.25, 0.25, 0.25, 0.25])
    op = {"test": point(op_accuracy if op_accuracy is not None else final, fractions),
          "val": point(op_accuracy if op_accuracy is not None else final, fractions)}
    criterion = None if exits == 1 else {"proposed": "gate", "report-maxprob": "maxprob"}.get(cfg["method"], "entropy")
    summary = {"exit_accuracy": exit_accuracy, "final_accuracy": final, "method_accuracy": method_accuracy or final,
               "mean_gate": None, "n": 2000}
    rundir.write_json(run.file(rundir.EVAL), {
        "run": name, "model": cfg["model"], "dataset": cfg["dataset"], "method": cfg["method"], "recipe": cfg["recipe"],
        "seed": cfg["seed"], "checkpoint_sha256": "0" * 64, "num_exits": exits,
        "exit_macs": EXIT_MACS if exits > 1 else [PLAIN_MACS], "plain_macs": PLAIN_MACS, "exit_params": [1] * exits,
        "test": summary, "val": summary,
        "operating_point": {"criterion": criterion, "thresholds": [0.3] * (exits - 1), "how": "test fixture", **op},
    })
    if timing_ms is not None:
        plain, early = timing_ms
        rundir.write_json(run.file(rundir.TIMING), {
            "device": "cpu: test CPU (2 threads)", "n_images": 100, "batch_size": 64,
            "operating_point": {"criterion": criterion, "thresholds": [0.3] * (exits - 1)},
            # Medians unlike the means: the tables show means (the average cost per image).
            "batch1": {k: {"mean_ms": v, "median_ms": v * 0.8, "p95_ms": v * 1.5}
                       for k, v in (("plain", plain), ("full", plain * 1.1), ("early_exit", early))},
            "batched": {k: {"ms_per_image": v / 10, "mean_ms": v / 10, "median_ms": v / 10, "p95_ms": v / 10}
                        for k, v in (("plain", plain), ("full", plain * 1.1), ("early_exit", early))},
            "measured_speedup": {"batch1": plain / early, "batched": plain / early}, "macs_speedup": op["test"]["macs_speedup"],
            "early_exit_accuracy": op["test"]["accuracy"], "exit_fractions": fractions, "checkpoint_sha256": "0" * 64,
            "batch1_statistic": BATCH1_STATISTIC, "images": IMAGES,
        })
    if exits > 1 and sweep:
        rows = []
        for split in ("val", "test"):
            # Thresholds from 0 (everything leaves at the first exit) to 1 (everything reaches the final exit).
            for t, (accuracy, fr) in enumerate([(exit_accuracy[0], [1, 0, 0, 0]), (final - 0.05, [0.5, 0.3, 0.1, 0.1]),
                                                (final - 0.06, [0.1, 0.3, 0.5, 0.1]), (final, [0, 0, 0, 1])]):
                p = point(accuracy, fr)
                rows.append({"split": split, "criterion": criterion, "threshold": t / 3, "accuracy": accuracy,
                             "mean_macs": p["mean_macs"], "macs_speedup": p["macs_speedup"], "exit_fractions": json.dumps(fr),
                             "pareto": "false" if t == 2 else "true"})  # t=2 costs more than t=1 for less accuracy
        rundir.write_csv(run.file(rundir.SWEEP), rows)
    if exits > 1 and calibration:
        rundir.write_json(run.file(rundir.CALIBRATION), {"criterion": criterion, "target": {"max_drop": 1.0},
                                                         "thresholds": [0.3] * (exits - 1), **op, "checkpoint_sha256": "0" * 64})
    return run.path


def write_fixture_runs(root: Path) -> Path:
    runs = root / "runs"
    for seed, final in enumerate([0.80, 0.82, 0.87]):
        write_run(runs, f"bnet-s{seed}", config("bnet", seed), [0.5, 0.6, 0.7, final], op_accuracy=final - 0.01,
                  fractions=[0.1, 0.2, 0.3, 0.4], timing_ms=(6.0, 3.0 + seed))
    write_run(runs, "bnet-lr", config("bnet", 0, lr=1e-3), [0.5, 0.6, 0.7, 0.50], timing_ms=(6.0, 4.0))
    for seed, final in enumerate([0.76, 0.78]):
        write_run(runs, f"baseline-s{seed}", config("baseline", seed), [final], timing_ms=(5.0, 5.0))
    write_run(runs, "proposed-s0", config("proposed", 0), [0.4, 0.5, 0.6, 0.75], method_accuracy=0.79, timing_ms=(6.0, 2.0))
    write_run(runs, "maxprob-s0", config("report-maxprob", 0), [0.5, 0.6, 0.7, 0.81])  # no timing.json
    write_run(runs, SCRIPT_NAME, config("report-proposed", 0), [0.5, 0.6, 0.7, 0.78], timing_ms=(6.0, 2.5))
    write_run(runs, "jpeg-bnet", config("bnet", 0, dataset="imagefolder", data_dir="/data/cifar10-jpeg.tar.gz"),
              [0.5, 0.6, 0.7, 0.70], timing_ms=(6.0, 3.0))
    bare = runs / "untrained"
    bare.mkdir()
    rundir.write_json(bare / rundir.CONFIG, config("bnet", 5, dataset="cifar100"))
    return runs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = write_fixture_runs(root)
    result = build_report([runs], root / "out")
    return {"runs": runs, "result": result, "collection": collect([runs]), "references": load_references(),
            "md": result.markdown.read_text(), "html": result.html.read_text()}


def _table(tables, caption):
    return next(t for t in tables if t.caption == caption)


# ---------------------------------------------------------------------------------------------- references


def test_builtin_references_hold_the_report_numbers_and_none_of_the_paper():
    references = builtin_references()
    (usi,) = references.sources
    table1_numbers = {(n.dataset, n.method): n.value for n in usi.numbers if n.quantity == "test_accuracy"}
    assert table1_numbers == {
        ("cifar10", "baseline"): 77.40, ("cifar10", "bnet"): 78.94, ("cifar10", "report-proposed"): 77.43, ("cifar10", "report-maxprob"): 79.51,
        ("cifar100", "baseline"): 32.89, ("cifar100", "bnet"): 39.98, ("cifar100", "report-proposed"): 31.38, ("cifar100", "report-maxprob"): 35.51,
        ("cinic10", "baseline"): 66.87, ("cinic10", "bnet"): 69.27, ("cinic10", "report-proposed"): 68.24, ("cinic10", "report-maxprob"): 69.59,
    }
    assert all(n.where.startswith(n.table) for n in usi.numbers)
    assert usi.get("speedup_percent", "vgg13", "cifar10", "report-maxprob").value == 128.34
    # (6.06108 / 2.60544 - 1) * 100 and (6.06108 / 2.92706 - 1) * 100, by hand.
    assert usi.recomputed_speedup("vgg13", "cifar10", "report-maxprob") == pytest.approx(132.6317, abs=1e-3)
    assert usi.recomputed_speedup("vgg13", "cifar10", "report-proposed") == pytest.approx(107.0706, abs=1e-3)
    assert "proposed" not in usi.rows and "proposed" in usi.no_row
    assert "not publicly available" in references.not_available[0]["note"]
    assert all(n.model == "vgg13" for n in usi.numbers)


def test_extra_reference_file_becomes_another_column(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "bnet", config("bnet", 0), [0.5, 0.6, 0.7, 0.80], timing_ms=(6.0, 3.0))
    extra = tmp_path / "mine.json"
    extra.write_text(json.dumps({"format": "repro-references/1", "sources": [{
        "key": "mine", "label": "My rerun", "citation": "a rerun", "numbers": [
            {"table": "Table 1", "quantity": "test_accuracy", "unit": "percent", "model": "vgg13", "dataset": "cifar10",
             "method": "bnet", "value": 81.5, "where": "my notes"}]}]}))
    result = build_report([runs], tmp_path / "out", references=[extra])
    t1 = table1(collect([runs]), load_references([extra]))[0]
    assert t1.cell("bnet", "My rerun (%)").value == 81.5
    assert t1.cell("bnet", "Δ final exit vs My rerun").text == "-1.50"  # 80.00 - 81.5
    assert t1.cell("bnet", "Δ final exit vs USI report").text == "+1.06"  # 80.00 - 78.94
    assert "My rerun" in result.html.read_text()


@pytest.mark.parametrize("text, line", [
    ('{\n  "format": "repro-references/1",\n  "sources": [\n    {"key": "x",}\n  ]\n}\n', 4),  # trailing comma
    ('{\n  "format": "repro-references/1",\n  "sources": [\n    {"key": "x", "label": "X", "citation": "c",\n'
     '     "numbers": [\n       {"table": "Table 1", "quantity": "accuracy", "unit": "percent", "model": "vgg13",\n'
     '        "dataset": "cifar10", "method": "bnet", "value": "high", "where": "w"}]}\n  ]\n}\n', 6),  # value not a number
    ('{"sources": []}', 1),  # no format marker
    ('{\n  "format": "repro-references/1",\n  "sources": [],\n  "not_available": [\n    {"citation": "x"}\n  ]\n}\n', 5),  # no note
    ('{\n  "format": "repro-references/1",\n  "sources": [\n    {"key": "x", "label": "X", "citation": "c",\n'
     '     "rows": {"bnet": 3}, "numbers": []}\n  ]\n}\n', 4),  # a row label that is not text
])
def test_invalid_reference_file_is_one_line_naming_the_line(tmp_path, text, line):
    runs = tmp_path / "runs"
    write_run(runs, "bnet", config("bnet", 0), [0.5, 0.6, 0.7, 0.80])
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    result = CliRunner().invoke(app, ["report", str(runs), "--out", str(tmp_path / "out"), "--reference", str(bad)])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert message.startswith("Error: reference file") and f"line {line}" in message and "bad.json" in message
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- aggregation


def test_rows_of_one_table_that_differ_in_setup_are_named_by_it(tmp_path):
    """A full-width baseline beside half-width early-exit networks: the odd one out is named by its width,
    the majority is not; where no value is shared by most, every row names its own."""
    runs = tmp_path / "runs"
    half = lambda method: {**config(method, 0), "width": 0.5}
    write_run(runs, "baseline-full", config("baseline", 0), [0.75])
    write_run(runs, "bnet-half", half("bnet"), [0.5, 0.6, 0.7, 0.72])
    write_run(runs, "proposed-half", half("proposed"), [0.5, 0.6, 0.7, 0.71])
    labels = sorted(g.label for g in collect([runs]).groups)
    assert labels == ["baseline · width 1", "bnet", "proposed"]
    shutil.rmtree(runs / "proposed-half")
    labels = sorted(g.label for g in collect([runs]).groups)
    assert labels == ["baseline · width 1", "bnet · width 0.5"]


def test_groups_average_only_seeds(report):
    groups = {(g.dataset.label, g.label): g for g in report["collection"].groups}
    assert sorted(groups) == sorted([
        ("CIFAR-10", "baseline"), ("CIFAR-10", "bnet · lr 0.0005"), ("CIFAR-10", "bnet · lr 0.001"),
        ("CIFAR-10", "proposed"), ("CIFAR-10", "report-proposed"), ("CIFAR-10", "report-maxprob"),
        ("CIFAR-10 (JPEG copy)", "bnet"), ("CIFAR-100", "bnet"),
    ])
    assert groups[("CIFAR-10", "bnet · lr 0.0005")].seeds == [0, 1, 2]
    assert groups[("CIFAR-10", "bnet · lr 0.001")].n == 1
    assert groups[("CIFAR-10 (JPEG copy)", "bnet")].dataset.reference == "cifar10"


def test_table1_mean_std_reference_and_difference(report):
    t1 = _table(table1(report["collection"], report["references"]), "VGG-13 · CIFAR-10")
    # Seeds 0.80, 0.82, 0.87: mean 83.00; deviations -3, -1, +4 points -> sample variance 26 / 2 = 13.
    cell = t1.cell("bnet · lr 0.0005", "Final exit (%)")
    assert cell.value == pytest.approx(83.0)
    assert cell.text == f"83.00 ± {math.sqrt(13):.2f}" == "83.00 ± 3.61"
    assert t1.cell("bnet · lr 0.0005", "USI report (%)").text == "78.94"
    assert t1.cell("bnet · lr 0.0005", "Δ final exit vs USI report").text == "+4.06"
    assert t1.cell("bnet · lr 0.001", "Final exit (%)").text == "50.00"  # one run: no spread
    assert t1.cell("bnet · lr 0.0005", "Seeds (n)").text == "0, 1, 2 (3)"
    # Baseline 0.76, 0.78: mean 77.00, sample std sqrt(2) = 1.41; Δ vs 77.40 = -0.40.
    assert t1.cell("baseline", "Final exit (%)").text == "77.00 ± 1.41"
    assert t1.cell("baseline", "Δ final exit vs USI report").text == "-0.40"
    # The gated method's own output differs from its final exit; the others' is the final exit.
    assert t1.cell("proposed", "Method output (%)").text == "79.00"
    assert t1.cell("bnet · lr 0.0005", "Method output (%)").text == "= final"
    # `proposed` has no reference row, and says why.
    missing = t1.cell("proposed", "USI report (%)")
    assert missing.missing and not missing.commands and "did not implement" in missing.note
    assert t1.cell("report-maxprob", "USI report (%)").text == "79.51"


def test_jpeg_copy_is_labelled_and_compared_only_under_its_label(report):
    t1 = _table(table1(report["collection"], report["references"]), "VGG-13 · CIFAR-10 (JPEG copy)")
    assert t1.cell("bnet", "USI report (%)").text == "78.94"
    assert t1.cell("bnet", "Δ final exit vs USI report").text == "-8.94"  # 70.00 - 78.94
    assert any("JPEG" in note and "not, CIFAR-10 accuracies" in note for note in t1.notes)
    assert "VGG-13 · CIFAR-10 (JPEG copy)" in report["md"]


def test_table2_latency_speedups_and_the_recomputed_reference(report):
    t2 = _table(table2(report["collection"], report["references"]), "VGG-13 · CIFAR-10")
    bnet = "bnet · lr 0.0005"
    # Early-exit latencies 3, 4, 5 ms: mean 4.000, std 1.000; speed-ups 6/3, 6/4, 6/5 = 2, 1.5, 1.2.
    assert t2.cell(bnet, "Latency (ms)").text == "4.000 ± 1.000"
    speedups = [2.0, 1.5, 1.2]
    mean = sum(speedups) / 3
    std = math.sqrt(sum((s - mean) ** 2 for s in speedups) / 2)
    assert t2.cell(bnet, "Measured speed-up").text == f"{mean:.2f} ± {std:.2f}× ({(mean - 1) * 100:+.1f} %)" == "1.57 ± 0.40× (+56.7 %)"
    # Operating point: accuracy final - 1 point, fractions 0.1/0.2/0.3/0.4 -> mean MACs 2+9+22.5+44 = 77.5.
    assert t2.cell(bnet, "Accuracy (%)").text == "82.00 ± 3.61"
    assert t2.cell(bnet, "MAC speed-up").value == pytest.approx(100 / 77.5)
    exits = _table(table2_exits(report["collection"]), "VGG-13 · CIFAR-10")
    assert exits.columns[3:] == ["Exit 1 (%)", "Exit 2 (%)", "Exit 3 (%)", "Final (%)"]
    assert [c.text for c in exits.row(bnet)[3:]] == ["10.0 ± 0.0", "20.0 ± 0.0", "30.0 ± 0.0", "40.0 ± 0.0"]
    assert "baseline" not in [row[0].text for row in exits.rows]  # no early exits: nothing to show
    maxprob = "report-maxprob"
    assert t2.cell(maxprob, "USI report printed (%)").text == "128.34"
    assert t2.cell(maxprob, "USI report recomputed (%)").text == "132.63 ≠"
    assert t2.cell("report-proposed", "USI report recomputed (%)").text == "107.07"
    assert t2.cell("baseline", "USI report (ms)").text == "6.06108"
    # No timing.json for the maxprob run: a dash and the command that measures it; nothing guessed.
    latency = t2.cell(maxprob, "Latency (ms)")
    assert latency.missing and latency.commands == [f"repro eval {report['runs'] / 'maxprob-s0'} --timing"]


def test_table3_calibrated_points(report):
    t3 = _table(table3(report["collection"]), "VGG-13 · CIFAR-10")
    assert [row[0].text for row in t3.rows] == ["bnet · lr 0.0005", "bnet · lr 0.001", "proposed", "report-proposed", "report-maxprob"]
    assert t3.cell("bnet · lr 0.0005", "Target").text == "max drop 1 points"
    assert t3.cell("bnet · lr 0.0005", "Test accuracy (%)").text == "82.00 ± 3.61"


def test_mean_front_averages_seeds_along_cost():
    # Seed A reaches 50 % at cost 0.2 and 80 % at 0.6; seed B 60 % at 0.4 and 90 % at 0.6.
    cost, mean, std = mean_front([(_array([0.2, 0.6]), _array([50.0, 80.0])), (_array([0.4, 0.6]), _array([60.0, 90.0]))])
    assert cost.tolist() == [0.4, 0.6]  # at 0.2 seed B reaches nothing yet
    assert mean.tolist() == [55.0, 85.0]
    assert std.tolist() == pytest.approx([math.sqrt(50), math.sqrt(50)])


def _array(values):
    import numpy as np

    return np.asarray(values, dtype=float)


# ---------------------------------------------------------------------------------------------- rendering


def test_markdown_has_both_tables_dashes_with_commands_and_escaped_names(report):
    md = report["md"]
    assert "## Table 1: test accuracy without early exit" in md and "## Table 2: early exit at the operating point" in md
    assert "83.00 ± 3.61" in md and "132.63 ≠" in md and "128.34" in md
    timing_command = f"repro eval {report['runs'] / 'maxprob-s0'} --timing"
    # A dash in the table, and the command that fills it once below the table (not repeated in every cell).
    assert f"— `{timing_command}`" not in md and f"To fill the dashes: `{timing_command}`" in md
    table2_md = md[md.index("## Table 2"):md.index("### Where test images leave")]
    assert table2_md.count(f"`{timing_command}`") == 1
    # Every reference row shows, ours or not: CIFAR-100 and CINIC-10 from the report's Table 1 alone.
    for caption in ("VGG-13 · CIFAR-100", "VGG-13 · CINIC-10"):
        assert f"**{caption}**" in md
    assert "| 66.87 |" in md and "repro train --model vgg13 --method report-maxprob --dataset cinic10" in md
    # The bare run is listed with what it lacks and how to produce it.
    assert f"`repro eval {report['runs'] / 'untrained'}`" in md
    assert "| &lt;script&gt;alert(1) |" in md  # the Runs table's name column
    # Only inside code spans (the full path, and the folder relative to the input), where it is text.
    assert "<script" not in md.replace(f"`{report['runs'] / SCRIPT_NAME}`", "").replace(f"`{SCRIPT_NAME}`", "")
    assert "6.06108 / 2.60544 − 1 = 132.63 %" in md
    for figure in FIGURES:
        assert f"]({figure})" in md


def test_html_escapes_run_names_and_is_self_contained(report):
    html = report["html"]
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)" in html
    assert "default-src 'none'" in html  # no network, no scripts, even if escaping ever failed
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)  # nothing loaded from outside
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(FIGURES)
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert '<code class="fill">repro eval ' in html


def test_every_figure_is_a_valid_png(report):
    result = report["result"]
    assert sorted(path.name for path in result.figures) == sorted(FIGURES)
    for path in result.figures:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), path
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 500 and image.size[1] >= 300


def test_stale_eval_is_not_reported(tmp_path):
    runs = tmp_path / "runs"
    path = write_run(runs, "bnet", config("bnet", 0), [0.5, 0.6, 0.7, 0.80], timing_ms=(6.0, 3.0))
    (path / rundir.CHECKPOINT).write_bytes(b"weights of another training")  # eval.json records sha256 '000...'
    collection = collect([runs])
    (record,) = collection.runs
    assert record.eval is None and record.timing is None and record.sweep is None
    assert {m.what for m in collection.missing} == {rundir.EVAL, rundir.TIMING, rundir.SWEEP, rundir.CALIBRATION}
    t1 = table1(collection, load_references())[0]
    assert t1.cell("bnet", "Final exit (%)").commands == [f"repro eval {path}"]


def _record_checkpoint(path: Path, name: str, sha256: str | None) -> None:
    """Set (or, with None, remove as an older repro wrote it) the checkpoint a JSON file of a run records."""
    data = rundir.read_json(path / name)
    data.pop("checkpoint_sha256", None)
    if sha256 is not None:
        data["checkpoint_sha256"] = sha256
    rundir.write_json(path / name, data)


def checkpointed_run(runs: Path, name: str = "bnet") -> Path:
    """A run with a checkpoint.pt whose SHA-256 every derived file records (sweep.csv through its sidecar).

    Its numbers are easy to spot: early-exit latency 3.700 ms, calibrated test accuracy 65.43 %.
    """
    path = write_run(runs, name, config("bnet", 0), [0.5, 0.6, 0.7, 0.80], timing_ms=(6.0, 3.7))
    (path / rundir.CHECKPOINT).write_bytes(b"weights of the first training")
    sha256 = rundir.file_sha256(path / rundir.CHECKPOINT)
    calibration = rundir.read_json(path / rundir.CALIBRATION)
    calibration["test"]["accuracy"] = 0.6543
    rundir.write_json(path / rundir.CALIBRATION, calibration)
    for file in (rundir.EVAL, rundir.TIMING, rundir.CALIBRATION):
        _record_checkpoint(path, file, sha256)
    write_sweep(rundir.RunDir(path), rundir.read_csv(path / rundir.SWEEP), sha256)
    return path


def test_results_of_the_current_checkpoint_are_reported(tmp_path):
    checkpointed_run(tmp_path / "runs")
    collection = collect([tmp_path / "runs"])
    (record,) = collection.runs
    assert collection.missing == []
    assert record.eval and record.timing and record.calibration and record.sweep is not None
    assert table2(collection, load_references())[0].cell("bnet", "Latency (ms)").text == "3.700"
    assert table3(collection)[0].cell("bnet", "Test accuracy (%)").text == "65.43"


@pytest.mark.parametrize("key", ["batch1_statistic", "images"])
def test_a_timing_file_of_an_older_repro_is_asked_again_not_shown(tmp_path, key):
    """An older repro's batch-1 speed-up was a ratio of median latencies, over the first test images: never
    shown beside the MAC speed-up."""
    path = checkpointed_run(tmp_path / "runs")
    data = rundir.read_json(path / rundir.TIMING)
    data.pop(key)
    rundir.write_json(path / rundir.TIMING, data)
    collection = collect([tmp_path / "runs"])
    (record,) = collection.runs
    assert record.timing is None and record.eval is not None
    (missing,) = collection.missing
    assert missing.what == rundir.TIMING and "written by an older repro" in missing.why
    assert missing.command == f"repro eval {path} --timing"
    latency = table2(collection, load_references())[0].cell("bnet", "Latency (ms)")
    assert latency.value is None and latency.commands == [f"repro eval {path} --timing"]


def test_a_fresh_eval_of_a_retrained_run_never_shows_the_old_sweep_calibration_or_timing(tmp_path):
    runs = tmp_path / "runs"
    path = checkpointed_run(runs)
    # Resumed and re-evaluated: new checkpoint.pt and eval.json; timing, sweep and calibration not recomputed.
    (path / rundir.CHECKPOINT).write_bytes(b"weights after resuming")
    _record_checkpoint(path, rundir.EVAL, rundir.file_sha256(path / rundir.CHECKPOINT))
    collection = collect([runs])
    (record,) = collection.runs
    assert record.eval is not None and record.timing is None and record.sweep is None and record.calibration is None
    commands = {m.what: m.command for m in collection.missing}
    assert commands == {
        rundir.TIMING: f"repro eval {path} --timing",
        rundir.SWEEP: f"repro sweep {path}",
        rundir.CALIBRATION: f"repro sweep {path} --max-drop 1.0",
    }
    assert all("another checkpoint" in m.why for m in collection.missing)
    t2 = table2(collection, load_references())[0]
    for column in ("Latency (ms)", "Plain network (ms)", "Measured speed-up"):
        assert t2.cell("bnet", column).missing and t2.cell("bnet", column).commands == [f"repro eval {path} --timing"]
    assert t2.cell("bnet", "Accuracy (%)").text == "80.00"  # the fresh eval.json is reported
    cell = table3(collection)[0].cell("bnet", "Test accuracy (%)")
    assert cell.missing and cell.commands == [f"repro sweep {path} --max-drop 1.0"]
    md = build_report([runs], tmp_path / "out").markdown.read_text()
    assert "3.700" not in md and "65.43" not in md
    assert f"`repro eval {path} --timing`" in md and f"`repro sweep {path}`" in md


@pytest.mark.parametrize("case", ["other", "unrecorded"])
@pytest.mark.parametrize("what", [rundir.TIMING, rundir.CALIBRATION, rundir.SWEEP])
def test_a_file_of_another_or_an_unknown_checkpoint_is_missing(tmp_path, what, case):
    path = checkpointed_run(tmp_path / "runs")
    sha256 = "f" * 64 if case == "other" else None
    if what == rundir.SWEEP and sha256:
        write_sweep(rundir.RunDir(path), rundir.read_csv(path / rundir.SWEEP), sha256)
    elif what == rundir.SWEEP:
        (path / SWEEP_SOURCE).unlink()  # written before sweep.csv had a sidecar
    else:
        _record_checkpoint(path, what, sha256)
    collection = collect([tmp_path / "runs"])
    (record,) = collection.runs
    (item,) = collection.missing
    assert item.what == what and item.command == record.command(what)
    assert ("another checkpoint" if sha256 else "does not record the checkpoint") in item.why
    assert getattr(record, {rundir.TIMING: "timing", rundir.CALIBRATION: "calibration", rundir.SWEEP: "sweep"}[what]) is None
    assert record.eval is not None


def test_a_sweep_csv_rewritten_after_its_sidecar_cannot_be_checked(tmp_path):
    path = checkpointed_run(tmp_path / "runs")
    rows = rundir.read_csv(path / rundir.SWEEP)
    rundir.write_csv(path / rundir.SWEEP, rows[:2])  # e.g. an older `repro sweep`, which writes no sidecar
    (item,) = collect([tmp_path / "runs"]).missing
    assert item.what == rundir.SWEEP and item.command == f"repro sweep {path}"


def test_markdown_escape():
    assert markdown_escape("a|b <i>*x*</i> [l](u) `c`") == r"a\|b &lt;i&gt;\*x\*&lt;/i&gt; \[l\](u) \`c\`"


# ---------------------------------------------------------------------------------------------- command line


def test_cli_writes_the_report_and_says_where(tmp_path, monkeypatch):
    write_fixture_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "runs"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "reports/latest" in output and "Open reports/latest/report.html" in output
    assert "repro eval runs/maxprob-s0 --timing" in output
    assert (tmp_path / "reports" / "latest" / "report.md").is_file()
    assert (tmp_path / "reports" / "latest" / "exit-accuracy.png").is_file()


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("empty", "no runs found"),
    ("file", "is not a run directory or a folder of runs"),
    ("config-only", "nothing to report"),
    ("corrupt-config", "is not valid JSON"),
])
def test_cli_bad_inputs_are_one_line(tmp_path, case, expected):
    target = tmp_path / "input"
    if case == "empty":
        target.mkdir()
        (target / "notes.txt").write_text("no runs here")
    elif case == "file":
        target.write_text("not a folder")
    elif case == "config-only":
        target.mkdir()
        rundir.write_json(target / rundir.CONFIG, config("bnet", 0))
    elif case == "corrupt-config":
        target.mkdir()
        (target / rundir.CONFIG).write_text("{not json")
    result = CliRunner().invoke(app, ["report", str(target), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert message.startswith("Error:") and expected in message and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_second_report_replaces_the_first(tmp_path):
    runs = write_fixture_runs(tmp_path)
    out = tmp_path / "out"
    build_report([runs], out)
    # Only the baseline is left: no sweep, no per-exit curve, no exit histogram in the new report.
    for path in runs.iterdir():
        if not path.name.startswith("baseline"):
            shutil.rmtree(path)
    result = build_report([runs], out)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in result.figures)
    assert "accuracy-cost.png" not in {p.name for p in result.figures}


# ---------------------------------------------------------------------------------------------- run states, labels


def test_an_unfinished_run_is_marked_and_left_out_unless_asked(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "bnet-s0", config("bnet", 0), [0.5, 0.6, 0.7, 0.80])
    path = write_run(runs, "bnet-s1", config("bnet", 1), [0.5, 0.6, 0.7, 0.60])
    rundir.write_json(path / rundir.STATE, {"status": "interrupted", "epoch": 1, "epochs": 3, "stopped_early": False, "error": None})
    references = load_references()
    cifar10 = lambda tables: next(t for t in tables if t.caption == "VGG-13 · CIFAR-10")  # noqa: E731
    row = cifar10(table1(collect([runs]), references)).row("bnet")
    assert row[0].text == "bnet — left out: bnet-s1 interrupted at epoch 1/3"
    assert row[2].text == "80.00"  # seed 0 alone
    counted = cifar10(table1(collect([runs], include_unfinished=True), references)).row("bnet")
    assert counted[2].text == "70.00 ± 14.14" and counted[0].text == "bnet"
    result = CliRunner().invoke(app, ["report", str(runs), "--out", str(tmp_path / "out"), "--include-unfinished"])
    assert result.exit_code == 0 and "70.00 ± 14.14" in (tmp_path / "out" / "report.md").read_text()


def test_a_run_that_overrides_its_recipe_says_what(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "bnet", {**config("bnet", 0), "batch_norm": True, "lr": 2e-3}, [0.5, 0.6, 0.7, 0.80])
    (group,) = collect([runs]).groups
    assert group.setup.startswith("recipe report with lr, batch_norm overridden, 3 epochs")


def test_a_final_exit_at_chance_is_not_divided_by(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "proposed", config("proposed", 0), [0.5, 0.3, 0.2, 0.10], op_accuracy=0.5, fractions=[1.0, 0, 0, 0])
    (t3,) = table3(collect([runs]))
    cell = t3.cell("proposed", "Test accuracy (%)")
    assert cell.text == "final exit near chance (10.0 %): no accuracy to keep"
    assert t3.cell("proposed", "MAC speed-up").text == ""


def test_dollar_signs_in_names_are_drawn_literally(tmp_path):
    runs = tmp_path / "a $x^2$ folder"
    write_run(runs, "bnet $\\alpha$", config("bnet", 0, dataset="imagefolder", data_dir="/data/$x^$ and $\\frac$"), [0.5, 0.6, 0.7, 0.80])
    result = build_report([runs], tmp_path / "out")
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) for path in result.figures)


def test_equal_cost_table_chooses_on_validation_and_reads_test(report):
    from repro.report.tables import equal_cost_table

    (t,) = [t for t in equal_cost_table(report["collection"]) if t.caption == "VGG-13 · CIFAR-10"]
    # The fixture's sweeps: thresholds 0..3 with costs 0.2, ~0.42 (the front), ~0.62, 1.1 of plain (all
    # splits alike): at 0.4 x plain only the first point (exit 1's accuracy, 50 %) is affordable, at 0.6
    # the second (final - 5 points), at 0.8 still the second (the third is cheaper than 0.8 but less accurate).
    row = t.row("bnet · lr 0.0005")
    assert [cell.text for cell in row[3:]] == ["50.00 ± 0.00", "78.00 ± 3.61", "78.00 ± 3.61"]


def test_learned_gates_routing_table(report):
    """Where the soft output routes after the last epoch (metrics.csv), beside the first and final exits."""
    routing = _table(routing_table(report["collection"]), "VGG-13 · CIFAR-10")
    assert routing.columns[3:] == ["Routed to exit 1 (%)", "Largest share of a deeper exit (%)", "Exit 1, test (%)", "Final exit, test (%)"]
    assert {row[0].text for row in routing.rows} == {"proposed", "report-proposed", "report-maxprob"}  # soft-output methods only
    # The fixture's epoch 3 routes 0.5 / 3 to exit 1 and the rest evenly to exits 2, 3 and final.
    assert routing.cell("proposed", "Epochs").text == "3"
    assert routing.cell("proposed", "Routed to exit 1 (%)").text == "16.7"
    assert routing.cell("proposed", "Largest share of a deeper exit (%)").text == "27.8 (exit 2)"
    assert routing.cell("proposed", "Exit 1, test (%)").text == "40.00"
    assert routing.cell("proposed", "Final exit, test (%)").text == "75.00"
    assert "## Learned gates" in report["md"] and 'id="learned-gates"' in report["html"]


def test_equal_cost_on_validation_reads_the_chosen_points_validation_accuracy(report):
    """The validation table shows the accuracy the choice was made on, at the same points as the test table."""
    import types

    import pandas as pd

    from repro.report.tables import accuracy_at_budget, equal_cost_table

    # Validation and test differ: val prefers the second point at 0.6 x plain, whose test accuracy is lower.
    sweep = pd.DataFrame({
        "split": ["val"] * 3 + ["test"] * 3, "criterion": ["entropy"] * 6, "threshold": [0.1, 0.2, 0.3] * 2,
        "accuracy": [0.50, 0.70, 0.60, 0.55, 0.65, 0.75], "macs_speedup": [4.0, 2.0, 1.8] * 2,
        "mean_macs": [25.0, 50.0, 55.0] * 2,
    })
    run = types.SimpleNamespace(sweep=sweep)
    assert accuracy_at_budget(run, "entropy", 0.6, "val") == 0.70
    assert accuracy_at_budget(run, "entropy", 0.6) == 0.65  # the same point, read on test
    assert accuracy_at_budget(run, "entropy", 0.3, "val") == 0.50
    (val,) = [t for t in equal_cost_table(report["collection"], "val") if t.caption == "VGG-13 · CIFAR-10"]
    assert "its validation accuracy" in val.notes[0]
    assert "#### On validation, where settings are chosen" in report["md"]
    assert 'id="equal-cost-validation"' in report["html"]


def write_lambda_runs(root: Path) -> None:
    """A lambda curve: proposed at cost_weight 0.1 (seeds 0 and 1) and 1 (seed 0), with hand-made gate sweeps."""
    def sweep(run: Path, points: list[tuple[float, float, float]]) -> None:  # (val accuracy, cost x plain, test accuracy)
        rows = [{"split": split, "criterion": "gate", "threshold": t / 10, "accuracy": val if split == "val" else test,
                 "mean_macs": cost * PLAIN_MACS, "macs_speedup": 1 / cost, "exit_fractions": "[1, 0, 0, 0]", "pareto": "true"}
                for split in ("val", "test") for t, (val, cost, test) in enumerate(points)]
        rundir.write_csv(rundir.RunDir(run).file(rundir.SWEEP), rows)

    def proposed(name: str, seed: int, cost_weight: float, points) -> None:
        cfg = config("proposed", seed) | {"cost_weight": cost_weight}
        sweep(write_run(root, name, cfg, [0.4, 0.5, 0.6, 0.75]), points)

    proposed("l0.1-s0", 0, 0.1, [(0.50, 0.2, 0.52), (0.70, 0.5, 0.68), (0.80, 1.0, 0.79)])
    proposed("l1-s0", 0, 1.0, [(0.60, 0.25, 0.61), (0.72, 0.556, 0.66), (0.75, 0.667, 0.74)])
    proposed("l0.1-s1", 1, 0.1, [(0.90, 0.2, 0.90)])  # seed 1 trained at one lambda only: not in the swept row


def test_equal_cost_chooses_lambda_and_threshold_together(tmp_path):
    """A lambda curve (runs differing in cost_weight alone) gets one more row: per seed, the best validation
    point under each budget over all its lambdas' sweeps, read on test; a seed with one lambda is left out."""
    from repro.report.tables import equal_cost_table

    write_lambda_runs(tmp_path)
    collection = collect([tmp_path])
    for split, expected in (("test", ["61.00", "66.00", "74.00"]), ("val", ["60.00", "72.00", "75.00"])):
        (table,) = equal_cost_table(collection, split)
        row = table.row("proposed · λ chosen on val (λ = 0.1, 1)")
        assert row[2].text == "1"
        assert [cell.text for cell in row[3:]] == expected
        assert any("λ chosen on val" in note for note in table.notes)
    # Each lambda keeps its own row, read from its own sweep alone (lambda 1 at seed 0).
    assert [c.text for c in table.row("proposed · λ 1")[3:]] == ["60.00", "72.00", "75.00"]


def test_own_criterion_figure_draws_a_lambda_curve_as_one_front(tmp_path):
    """The learned-gates figure: the default lambda as its own line (both seeds), the lambda curve as one
    front over all lambdas of a seed (the running best of every point by cost), other lambdas as marks."""
    from repro.report.figures import own_criterion_figure, own_criterion_panels
    from repro.report.render import png_bytes

    write_lambda_runs(tmp_path)
    (panel,) = own_criterion_panels(collect([tmp_path]))
    labels = [series.label for series in panel.series]
    assert labels == ["proposed · default, gate threshold (n=2)", "proposed, λ and gate threshold swept (λ = 0.1, 1; n=1)"]
    swept = panel.series[1]
    assert swept.x.tolist() == pytest.approx([0.2, 0.25, 0.5, 0.556, 0.667, 1.0])
    assert swept.y.tolist() == pytest.approx([52, 61, 68, 68, 74, 79])
    # lambda 1's operating point: write_run's default, a quarter of the images at each exit (62.5 of 100 MACs), 75 %.
    ((text, cost, accuracy, method),) = panel.marks
    assert (text, method) == ("λ=1", "proposed") and cost == pytest.approx(0.625) and accuracy == pytest.approx(75.0)
    assert png_bytes(own_criterion_figure([panel])).startswith(PNG_SIGNATURE)
    # Two datasets: one panel a row, each as wide as a single panel (long legends beside two narrow panels
    # pushed their axis labels off the figure).
    axes = [axis for axis in own_criterion_figure([panel, panel]).axes if axis.get_visible()]
    assert len(axes) == 2 and axes[0].get_position().x0 == pytest.approx(axes[1].get_position().x0)


def test_exit_accuracy_legend_follows_drawing_order_and_tells_widths_apart():
    """Legend entries in the order drawn (matplotlib's own order puts plain lines before error-bar lines, which
    split a method's widths apart), and two networks without exits (two widths) get different dash patterns."""
    import numpy as np

    from repro.report.figures import Panel, Series, exit_accuracy_figure

    x = np.arange(1, 4)
    panel = Panel("VGG-13", [Series("bnet [width=0.5] (n=2)", x, np.array([60.0, 65, 70]), np.array([1.0, 1, 1]), "bnet", 0),
                             Series("bnet [width=1] (n=1)", x, np.array([62.0, 70, 75]), None, "bnet", 1)],
                  reference_lines=[("baseline [width=0.5] (n=1), no early exits", 72.0, "baseline", 0),
                                   ("baseline [width=1] (n=1), no early exits", 74.0, "baseline", 1)])
    (axis,) = exit_accuracy_figure([panel]).axes
    assert [text.get_text() for text in axis.get_legend().get_texts()] == [
        "bnet [width=0.5] (n=2)", "bnet [width=1] (n=1)", "baseline [width=0.5] (n=1), no early exits",
        "baseline [width=1] (n=1), no early exits"]
    levels = [line for line in axis.get_lines() if line.get_label().endswith("no early exits")]
    assert len(levels) == 2 and levels[0].get_linestyle() != levels[1].get_linestyle()
    # Two datasets: one panel a row (side by side, the legends squeezed the exit labels into each other).
    axes = [axis for axis in exit_accuracy_figure([panel, panel]).axes if axis.get_visible()]
    assert len(axes) == 2 and axes[0].get_position().x0 == pytest.approx(axes[1].get_position().x0)


def test_best_at_budget_affords_on_validation_cost_and_breaks_ties_by_cost():
    """The budget is checked on the validation cost (a point cheap on validation but not on test is still
    chosen), equal validation accuracy goes to the cheaper point, and a NaN point is never chosen."""
    import types

    import pandas as pd

    from repro.report.tables import best_at_budget

    def run(rows):  # rows: (threshold, val accuracy, val cost, test accuracy, test cost)
        frame = pd.DataFrame([{"split": split, "criterion": "gate", "threshold": t, "accuracy": va if split == "val" else ta,
                               "mean_macs": (vc if split == "val" else tc) * 100, "macs_speedup": 1 / (vc if split == "val" else tc)}
                              for split in ("val", "test") for t, va, vc, ta, tc in rows])
        return types.SimpleNamespace(sweep=frame)

    a = run([(0.1, 0.60, 0.38, 0.61, 0.45), (0.2, 0.70, 0.55, 0.50, 0.39)])
    assert best_at_budget([a], "gate", 0.4) == 0.61  # cheap enough on validation (0.38), not on test (0.45)
    b = run([(0.1, 0.60, 0.35, 0.58, 0.35), (0.2, math.nan, 0.30, 0.99, 0.30)])
    assert best_at_budget([a, b], "gate", 0.4) == 0.58  # ties at 0.60 on validation: b's point is cheaper; NaN skipped
    assert best_at_budget([b], "gate", 0.32) is None


def test_a_lambda_curve_with_a_run_that_left_lambda_unset(tmp_path):
    """A run whose config has cost_weight None trained at the method's default (0.1): it joins the curve
    as that lambda, in the table and in the figure."""
    from repro.report.figures import own_criterion_panels
    from repro.report.tables import equal_cost_table

    write_lambda_runs(tmp_path)
    config_path = tmp_path / "l0.1-s0" / rundir.CONFIG
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"cost_weight": None}))
    collection = collect([tmp_path])
    (table,) = equal_cost_table(collection)
    row = table.row("proposed · λ chosen on val (λ = 0.1, 1)")
    assert [cell.text for cell in row[3:]] == ["61.00", "66.00", "74.00"]
    (panel,) = own_criterion_panels(collection)
    assert "proposed, λ and gate threshold swept (λ = 0.1, 1; n=1)" in [series.label for series in panel.series]
    assert [mark[0] for mark in panel.marks] == ["λ=1"]


def test_criteria_table_reads_one_network_under_every_criterion(tmp_path):
    """Each trained network under every criterion of its sweep, its own first: a second criterion's rows
    (here maxprob, one point better everywhere) give their own budgeted accuracies."""
    import pandas as pd

    from repro.report.tables import criteria_table

    run = write_run(tmp_path, "bnet-s0", config("bnet", 0), [0.5, 0.6, 0.7, 0.80])
    sweep = pd.read_csv(run / rundir.SWEEP)
    other = sweep.assign(criterion="maxprob", accuracy=sweep["accuracy"] + 0.01)
    pd.concat([sweep, other]).to_csv(run / rundir.SWEEP, index=False)
    (table,) = criteria_table(collect([tmp_path]))
    assert [(row[0].text, row[1].text) for row in table.rows] == [("bnet", "entropy (its own)"), ("bnet", "maxprob")]
    # The fixture's sweep: at 0.4 x plain only exit 1 (50 %) is affordable, at 0.6 and 0.8 the point 5 below the final exit.
    assert [cell.text for cell in table.rows[0][3:]] == ["50.00", "75.00", "75.00"]
    assert [cell.text for cell in table.rows[1][3:]] == ["51.00", "76.00", "76.00"]


# ---------------------------------------------------------------------------------------------- row labels


def test_rows_are_named_by_short_tags_and_the_legend_lists_their_options_once(tmp_path):
    """A method's options at their defaults are not named, departures are named shortly (λ, gate-detach),
    the paper's literal loss by that name; the full option list appears once, in the legend table."""
    from repro.report.tables import labels_table

    runs = tmp_path / "runs"
    proposed = lambda **options: {**config("proposed", 0), "gate_detach": False, "gate_bias": 0.0, "final_weight": 0.0,
                                  "joint_warmup": 0, "mix": "probs", "label_smoothing": 0.0, **options}
    write_run(runs, "default", proposed(), [0.5, 0.6, 0.7, 0.71])
    write_run(runs, "lambda1", proposed(cost_weight=1.0), [0.5, 0.6, 0.7, 0.71])
    write_run(runs, "detach", proposed(gate_detach=True), [0.5, 0.6, 0.7, 0.71])
    write_run(runs, "literal", proposed(joint_weight=0.0), [0.5, 0.1, 0.1, 0.1])
    collection = collect([runs])
    labels = sorted(g.label for g in collection.groups)
    assert labels == ["proposed · default", "proposed · gate-detach", "proposed · the paper's literal loss", "proposed · λ 1"]
    assert [g.named_label for g in collection.groups if g.literal] == ["proposed · the paper's literal loss"]
    (legend,) = labels_table(collection)
    rows = {row[0].text: (row[1].text, row[2].text) for row in legend.rows}
    assert rows["proposed · λ 1"] == ("cost_weight=1, gate_detach=false, joint_weight=1", "lambda1")
    assert rows["proposed · the paper's literal loss"] == ("cost_weight=0.1, gate_detach=false, joint_weight=0", "literal")
    md = build_report([runs], tmp_path / "out").markdown.read_text()
    assert "## Row labels" in md and md.count(markdown_escape("cost_weight=1, gate_detach=false, joint_weight=1")) == 1


def test_rows_of_other_recipes_are_named_by_the_recipe_not_every_setting_it_implies(tmp_path):
    """results/fair's rows: a recipe stands for its settings, and an exit list that is the model's own placement
    is no departure, nor is the default (report) recipe; only what departs from the run's recipe is named."""
    from repro.config import TrainConfig

    def recipe_config(recipe: str, method: str, **options) -> dict:
        options = {"width": 0.5, **options}
        return {**TrainConfig.from_recipe(recipe, method=method, dataset="cifar10", **options).to_dict(), "seed": 0}

    runs = tmp_path / "runs"
    write_run(runs, "modern-bnet", recipe_config("modern", "bnet", exits=list(range(9))), [0.5, 0.6, 0.7, 0.80])
    write_run(runs, "three-exits-bnet", recipe_config("report", "bnet", exits=[1, 4, 7]), [0.5, 0.6, 0.7, 0.80])
    write_run(runs, "modern-proposed", recipe_config("modern", "proposed"), [0.5, 0.6, 0.7, 0.80])
    write_run(runs, "report-objective", recipe_config("report", "proposed", stop_on="objective"), [0.5, 0.6, 0.7, 0.80])
    write_run(runs, "full-width-proposed", recipe_config("report", "proposed", width=1.0), [0.5, 0.6, 0.7, 0.80])
    labels = sorted(g.label for g in collect([runs]).groups)
    # Width is no recipe's setting: the full-width row is named by it, as it always was.
    assert labels == ["bnet · exits 1,4,7", "bnet · recipe modern", "proposed · recipe modern, width 0.5",
                      "proposed · stop-on objective, width 0.5", "proposed · width 1"]


def test_a_table_alone_of_its_kind_has_no_legend(tmp_path):
    from repro.report.tables import labels_table

    write_run(tmp_path, "bnet-s0", config("bnet", 0), [0.5, 0.6, 0.7, 0.80])
    assert labels_table(collect([tmp_path])) == []
    assert "## Row labels" not in build_report([tmp_path], tmp_path / "out").markdown.read_text()


def test_the_usi_tables_that_contradict_each_other_are_named_with_both_numbers(report):
    """The USI report's Table 2 gives its Baseline 78.94 % (Table 1: 77.40 %, and 78.94 % is B-Net's Table 1
    figure) and its Proposed 78.94 % (Table 1: 77.43 %); Prop+DifferentCriterion's early exit losing accuracy
    against its Table 1 is no contradiction."""
    from repro.report.tables import accuracy_discrepancies

    lines = accuracy_discrepancies(report["references"])
    assert len(lines) == 2
    assert lines[0].startswith("USI report, Table 2, Baseline: accuracy 78.94 %, but its Table 1 gives 77.40 %")
    assert "(78.94 % is B-Net's Table 1 figure)" in lines[0] and "Proposed: accuracy 78.94 %" in lines[1]
    assert accuracy_discrepancies(report["references"], "vgg13", "cifar100") == []
    table2_md = report["md"][report["md"].index("## Table 2"):report["md"].index("### Where test images leave")]
    assert all(line in table2_md for line in lines) and "Table 1 / Table 2 discrepancy." in report["md"]
    assert all(str(markupsafe.escape(line)) in report["html"] for line in lines)  # as Jinja escapes it
