"""Render the report (Markdown with PNG figures beside it, and one self-contained HTML file) and write it.

This is the one place that writes report files, each atomically through repro.rundir. Templates live in
reports/templates/ (the package `repro.templates` in the wheel) and only format what they are given.
Everything a user controls (run names, paths, config values, reference files) is escaped: HTML with
Jinja2's autoescape, Markdown with `markdown_escape` applied to every expression (Jinja2's `finalize`),
so a run named `<script>` shows as text in both. The HTML embeds its figures as base64 PNGs and its CSS
inline, and its Content-Security-Policy forbids scripts and any network access, so it opens offline.
"""

from __future__ import annotations

import base64
import datetime
import io
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
from matplotlib.figure import Figure

from repro import __version__, rundir
from repro.errors import ReproError
from repro.report.collect import Collection, Missing
from repro.report.figures import FIGURES
from repro.report.references import References
from repro.report.tables import (Cell, accuracy_discrepancies, criteria_table, equal_cost_table, labels_table, routing_table, speedup_discrepancies, table1, table2, table2_exits,
                                 table3)

MARKDOWN = "report.md"
HTML = "report.html"
TEMPLATES = "repro.templates"
PNG_DPI = 110


@dataclass
class ReportResult:
    out: Path  # the report folder
    markdown: Path
    html: Path
    figures: list[Path]
    runs: int
    groups: int
    missing: list[Missing] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- escaping


class Markdown(str):
    """Text already formatted as Markdown: `markdown_escape` passes it through unchanged."""


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def markdown_escape(value) -> str:
    """Any value as literal Markdown text: HTML characters become entities, Markdown syntax is backslashed."""
    if isinstance(value, Markdown):
        return value
    if value is None:
        return ""
    text = str(value).replace("\r", " ").replace("\n", " ")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def markdown_code(value) -> Markdown:
    """A code span that survives inside a table: pipes escaped, fenced by more backticks than it contains."""
    text = str(value).replace("\n", " ").replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markdown(f"{fence}{pad}{text}{pad}{fence}")


def markdown_cell(cell: Cell) -> Markdown:
    """A cell's text, or a dash (the commands that fill dashes are listed once below each table)."""
    if cell.blank:
        return Markdown("")
    return Markdown(markdown_escape(cell.text) if cell.text else "—")


def _load_template(name: str) -> str:
    return resources.files(TEMPLATES).joinpath(name).read_text(encoding="utf-8")


def environment(kind: str) -> jinja2.Environment:
    """Jinja2 for 'html' (autoescape) or 'markdown' (every expression through markdown_escape)."""
    loader = jinja2.FunctionLoader(_load_template)
    if kind == "html":
        env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                                 trim_blocks=True, lstrip_blocks=True)
    else:
        env = jinja2.Environment(loader=loader, autoescape=False, finalize=markdown_escape,
                                 undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        env.filters["code"] = markdown_code
        env.filters["cell"] = markdown_cell
        # A macro's output was escaped expression by expression inside it; do not escape it twice.
        env.filters["verbatim"] = Markdown
    return env


# ---------------------------------------------------------------------------------------------- context


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI, facecolor="white")
    return buffer.getvalue()


GATES_FIGURE = "own-criterion.png"  # shown in the "Learned gates" section, beside the table it draws
SECTION_FIGURES = {GATES_FIGURE}


def shown(name: str, data: bytes) -> dict:
    return {"file": name, "title": FIGURES[name][0], "caption": FIGURES[name][1], "base64": base64.b64encode(data).decode("ascii")}


def context(collection: Collection, references: References, inputs, figures: dict[str, bytes]) -> dict:
    """Everything the templates show, as plain data."""
    missing = collection.missing
    by_run: dict[str, list[Missing]] = {}
    for item in missing:
        by_run.setdefault(item.run, []).append(item)
    return {
        "title": "Early-exit networks: reproduction report",
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "inputs": [str(path) for path in inputs],
        "runs": collection.runs,
        "groups": collection.groups,
        "references": references,
        "discrepancies": speedup_discrepancies(references),
        "accuracy_discrepancies": accuracy_discrepancies(references),
        "table1": table1(collection, references),
        "table2": table2(collection, references),
        "table2_exits": table2_exits(collection),
        "table3": table3(collection),
        "equal_cost": equal_cost_table(collection),
        "equal_cost_val": equal_cost_table(collection, "val"),
        "criteria": criteria_table(collection),
        "labels": labels_table(collection),
        "routing": routing_table(collection),
        "figures": [shown(name, data) for name, data in figures.items() if name not in SECTION_FIGURES],
        "gates_figure": shown(GATES_FIGURE, figures[GATES_FIGURE]) if GATES_FIGURE in figures else None,
        "figures_absent": [FIGURES[name][0] for name in FIGURES if name not in figures],
        "missing": by_run,
        "files": [rundir.METRICS, rundir.EVAL, rundir.TIMING, rundir.SWEEP, rundir.CALIBRATION],
        "run_rows": run_rows(collection, inputs),
    }


def run_rows(collection: Collection, inputs) -> list[dict]:
    """The Runs table: every run (finished or not), its folder relative to the report's input when it lies
    below it (a short path that fits the table), its group, setup, seed and state."""
    roots = [Path(path).resolve() for path in inputs]
    rows = []
    for group in collection.groups:
        for run in group.members:
            path = run.run.path.resolve()
            shown = next((str(path.relative_to(root)) for root in roots if path.is_relative_to(root) and path != root), str(run.run.path))
            rows.append({"name": run.name, "path": shown, "group": f"{group.model_label} · {group.dataset.label} · {group.label}",
                         "setup": group.setup, "seed": run.seed, "state": run.state_text, "run": run.run})
    return rows


# ---------------------------------------------------------------------------------------------- writing


def write_report(out: Path, collection: Collection, references: References, inputs, figures: dict[str, Figure]) -> ReportResult:
    """Write report.md, its figures and report.html into `out` (created); figures of an older report that
    this one does not have are removed so the folder never mixes two reports."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReproError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    images = {name: png_bytes(figure) for name, figure in figures.items()}
    data = context(collection, references, inputs, images)
    written = []
    for name, png in images.items():
        rundir.atomic_write_bytes(out / name, png)
        written.append(out / name)
    for name in FIGURES:
        if name not in images:
            (out / name).unlink(missing_ok=True)
    rundir.atomic_write_text(out / MARKDOWN, environment("markdown").get_template("report.md.j2").render(data))
    rundir.atomic_write_text(out / HTML, environment("html").get_template("report.html.j2").render(data))
    return ReportResult(out, out / MARKDOWN, out / HTML, written, len(collection.runs), len(collection.groups), collection.missing)
