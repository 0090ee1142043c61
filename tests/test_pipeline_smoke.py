"""End-to-end smoke run through the real CLI: train -> eval --timing -> sweep -> report, on real data.

Data: the CIFAR-10 JPEG copy in ../shared/data when present, else Fashion-MNIST from Debian's
dataset-fashion-mnist package, else the embedded synthetic set; `pytest`'s header line says which
(tests/conftest.py). Then the report is checked as a reader would: both tables are there, every number in
them parses, and every figure it links to exists and is a valid PNG.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from repro.cli import app
from smoke_data import smoke_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A tiny VGG-13 that learns something in 2 epochs on a few hundred images (see repro/demo.py for why
# batch norm, the linear classifier and pooling heads).
TINY = ["--model", "vgg13", "--width", "0.125", "--batch-norm", "--classifier", "linear", "--head", "pool",
        "--subset", "500", "--epochs", "2", "--lr", "2e-3", "--batch-size", "64", "--device", "cpu"]
METHODS = ("baseline", "bnet", "proposed")
# A table cell holding our or a reference number: "83.00", "83.00 ± 3.61", "1.90× (+90.3 %)", "132.63 ≠".
# A speed-up whose timing repeats disagreed is marked "(unsteady)".
NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?( ± \d+(\.\d+)?)?×?( \([+-]?\d+(\.\d+)? %\))?( ≠)?( \(unsteady\))?$")


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"repro {' '.join(args)} failed:\n{result.output}"
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("smoke")
    dataset = smoke_dataset()
    data = ["--dataset", dataset.name] + (["--data-dir", str(dataset.data_dir)] if dataset.data_dir else [])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REPRO_CACHE", str(tmp_path_factory.getbasetemp() / "decoded-cache"))
        for method in METHODS:
            run = root / "runs" / method
            invoke("train", *TINY, *data, "--method", method, "--run-dir", str(run))
            invoke("eval", str(run), "--timing", "--timing-images", "16", "--batch-size", "64", "--device", "cpu")
        invoke("sweep", str(root / "runs"), "--max-drop", "1")
        invoke("report", str(root / "runs"), "--out", str(root / "report"))
    return root / "report"


def markdown_tables(text: str) -> dict[str, list[list[list[str]]]]:
    """Section heading (##) -> its Markdown tables, each a list of body rows (cells); header and rule left out."""
    sections, heading, previous_was_row = {}, None, False
    for line in text.splitlines():
        is_row = line.startswith("|")
        if line.startswith("## "):
            heading = line[3:].strip()
        elif is_row and heading:
            if not previous_was_row:
                sections.setdefault(heading, []).append([])
            sections[heading][-1].append([cell.strip() for cell in line.strip().strip("|").split("|")])
        previous_was_row = is_row
    return {name: [rows[2:] for rows in tables] for name, tables in sections.items()}


def test_both_tables_are_present_and_every_number_parses(report):
    text = (report / "report.md").read_text(encoding="utf-8")
    sections = markdown_tables(text)
    table1 = next(tables for name, tables in sections.items() if name.startswith("Table 1"))
    table2 = next(tables for name, tables in sections.items() if name.startswith("Table 2"))
    # Our data set's table holds a row with numbers per method run; the reference's other rows and data sets
    # are there too, with dashes where we have no run.
    ours = [next(rows for rows in tables if any(row[0] == "bnet" and NUMBER.match(row[2]) for row in rows)) for tables in (table1, table2)]
    for rows in ours:
        assert [row[0].split(" (")[0] for row in rows if row[0].split(" (")[0] in METHODS] == list(METHODS)
    for rows in table1 + table2:
        for row in rows:
            # Columns after the method, its criterion and seed count hold numbers, dashes or "= final".
            for cell in row[3:]:
                assert cell.startswith("—") or cell == "= final" or NUMBER.match(cell), f"unparsable {cell!r} in {row}"
    final_accuracy = [float(row[2]) for row in ours[0] if row[0].split(" (")[0] in METHODS]
    assert len(final_accuracy) == len(METHODS) and all(0.0 <= value <= 100.0 for value in final_accuracy)


def test_the_real_data_is_named_in_the_report(report):
    text = (report / "report.md").read_text(encoding="utf-8")
    assert smoke_dataset().report_label in text


def test_every_figure_exists_and_is_a_valid_png(report):
    text = (report / "report.md").read_text(encoding="utf-8")
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert len(figures) >= 4
    for name in figures:
        path = report / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as image:
            image.verify()
    html = (report / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(set(figures))
