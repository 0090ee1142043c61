"""The report's tables as data: our numbers (mean ± std over seeds, n) with the reference numbers beside.

- Table 1 (the reproduction report's Table 1): test accuracy without early exit, per model x dataset x
  method: the final exit, and the method's own output where it differs (the soft output f~_1 of the
  paper's gated method), each reference source's number and our difference from it in points.
- Table 2 (the report's Table 2, done over many images): early exit at the run's operating point (eval.json):
  test accuracy, latency per image at batch size 1 (timing.json), measured speed-up (plain-network latency /
  early-exit latency), MAC speed-up; the references' accuracy, latency and speed-up beside, their speed-up
  both as printed and recomputed from their times. `table2_exits`: the fraction of test images leaving at
  each exit there.
- Table 3: the operating point calibrated on validation for a target (calibration.json, `repro sweep`).

Every cell is a `Cell`: a formatted value, or a dash with the commands that would fill it (never a guess),
or a dash with a note saying why nothing can fill it (no reference number exists). Templates only format.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from repro import rundir
from repro.report.collect import Collection, Group, Stat, run_values, stack
from repro.report.references import BASELINE_METHOD, References, ReferenceSource, SPEEDUP_TOLERANCE

DASH = "—"


@dataclass
class Cell:
    text: str = ""  # the formatted value; "" renders as a dash
    value: float | None = None  # the unformatted number (percent, ms or ratio), for tests and sorting
    commands: list[str] = field(default_factory=list)  # what fills an empty (or partly filled) cell
    note: str = ""  # why an empty cell cannot be filled, or a remark on a value
    numeric: bool = True  # right-aligned
    blank: bool = False  # nothing can be here (an exit this network does not have): rendered empty, not a dash

    @property
    def missing(self) -> bool:
        return not self.text and not self.blank


@dataclass
class Table:
    caption: str  # "VGG-13 · CIFAR-10"
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    reference_labels: tuple[str, ...] = ()  # columns from these sources are shaded in HTML

    @property
    def fill_commands(self) -> list[str]:
        """Every command that fills a dash of this table, once each, in the order the cells ask for them
        (the templates list them below the table instead of repeating them in every cell)."""
        return list(dict.fromkeys(command for row in self.rows for cell in row for command in cell.commands))

    @property
    def shaded(self) -> list[bool]:
        """Per column: does it hold a reference number (or our difference from one)?"""
        return [any(c.startswith(f"{label} ") or (c.startswith("Δ") and c.endswith(f"vs {label}")) for label in self.reference_labels) for c in self.columns]

    def column(self, name: str) -> list[Cell]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]

    def row(self, label: str) -> list[Cell]:
        """The row whose first cell reads `label` (the method, with its variant), with or without what the
        table adds after it ("(the paper's literal loss)", "— left out: ...")."""
        for row in self.rows:
            text = row[0].text
            if text == label or text.startswith((f"{label} (", f"{label} —")):
                return row
        raise KeyError(label)

    def cell(self, label: str, column: str) -> Cell:
        return self.row(label)[self.columns.index(column)]


# ---------------------------------------------------------------------------------------------- formatting


def text_cell(text: str, note: str = "") -> Cell:
    return Cell(text=str(text), note=note, numeric=False)


def stat_cell(stat: Stat | None, group: Group, digits: int, commands: list[str], scale: float = 1.0, suffix: str = "") -> Cell:
    """mean ± std (ddof = 1) of a quantity over the group's seeds; '(n=k)' when only k of its runs have it."""
    if stat is None:
        return Cell(commands=commands)
    stat = stat.scaled(scale)
    text = f"{stat.mean:.{digits}f}"
    if stat.n > 1:
        text += f" ± {stat.std:.{digits}f}"
    text += suffix
    if stat.n < group.n:
        text += f" (n={stat.n})"
    return Cell(text=text, value=stat.mean, commands=commands if stat.n < group.n else [])


def reference_text(value: float) -> str:
    """A published number as printed: every decimal it has, at least two."""
    text = f"{value:.5f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def no_reference_note(source: ReferenceSource, group: Group) -> str:
    if group.method in source.no_row:
        return f"{source.label}: {source.no_row[group.method]}"
    if group.dataset.reference is None:
        return f"{source.label}: no number for {group.dataset.label}"
    return f"{source.label}: no number for {group.model_label} / {group.dataset.label} / {group.method}"


def reference_cell(source: ReferenceSource, quantity: str, group: Group) -> Cell:
    number = None
    if group.dataset.reference is not None:
        number = source.get(quantity, group.model, group.dataset.reference, group.method)
    if number is None:
        return Cell(note=no_reference_note(source, group))
    return Cell(text=reference_text(number.value), value=number.value, note=number.where)


def difference_cell(ours: Cell, reference: Cell) -> Cell:
    """Ours minus the reference, in the same unit (points for accuracies)."""
    if ours.value is None or reference.value is None:
        return Cell()
    delta = ours.value - reference.value
    return Cell(text=f"{delta:+.2f}", value=delta)


def _commands(group: Group, quantity: str, file: str) -> list[str]:
    return [run.command(file) for run in group.runs_lacking(quantity)]


# ---------------------------------------------------------------------------------------------- sections


def sections(collection: Collection, references: References | None = None, quantities: tuple[str, ...] = ()) -> list[tuple[str, list[Group]]]:
    """Groups by model x dataset (label), in display order, with a caption each. With `references`, every
    model x dataset for which a source has one of `quantities` gets a section, and every method it has a
    number for gets a row, a placeholder when we have no run: the reference tables always show in full."""
    groups = list(collection.groups)
    if references is not None:
        groups += _placeholders(groups, references, quantities)
        groups.sort(key=Group.sort_key)
    ordered: dict[tuple, list[Group]] = {}
    for group in groups:
        ordered.setdefault(group.section, []).append(group)
    return [(f"{groups[0].model_label} · {groups[0].dataset.label}", groups) for groups in ordered.values()]


def _placeholders(groups: list[Group], references: References, quantities: tuple[str, ...]) -> list[Group]:
    """A row for every (model, dataset, method) a reference has a number for and no group of ours covers;
    in the reference's own data set, and beside our runs on a copy of it (the CIFAR-10 JPEG copy)."""
    from repro.report.collect import describe_dataset

    wanted = {(n.model, n.dataset, n.method) for source in references.sources for n in source.numbers if n.quantity in quantities}
    have = {(g.model, g.dataset.label, g.method) for g in groups}
    # Our sections on a copy of a reference data set (same reference) get its rows too.
    copies = {g.dataset.label: (g.model, g.dataset, g.config.get("data_dir")) for g in groups
              if g.dataset.reference and g.dataset.name != g.dataset.reference}
    placeholders = []
    for model, dataset, method in sorted(wanted):
        targets = [(describe_dataset({"dataset": dataset}), None)]
        targets += [(info, data_dir) for m, info, data_dir in copies.values() if m == model and info.reference == dataset]
        for info, data_dir in targets:
            if (model, info.label, method) in have:
                continue
            config = {"model": model, "method": method, "dataset": info.name, "data_dir": data_dir, "recipe": "report"}
            placeholders.append(Group([], info, placeholder=True, _config=config))
            have.add((model, info.label, method))
    return placeholders


def placeholder_command(group: Group) -> str:
    """What trains the run a placeholder row lacks (then `repro eval` and, for Table 2, `--timing`)."""
    import shlex

    config = group.config
    data = f" --data-dir {shlex.quote(str(config['data_dir']))}" if config.get("data_dir") else ""
    return f"repro train --model {config['model']} --method {config['method']} --dataset {config['dataset']}{data}"


def _section_notes(groups: list[Group], references: References) -> list[str]:
    notes = []
    for group in groups:
        if group.dataset.note and group.dataset.note not in notes:
            notes.append(group.dataset.note)
    for source in references.sources:
        models = {number.model for number in source.numbers}
        for group in groups:
            note = f"{source.label} has no numbers for {group.model_label}: its columns stay empty here, never guessed."
            if group.model not in models and note not in notes:
                notes.append(note)
        for group in groups:
            if group.method in source.no_row:
                note = f"{source.label} has no row for {group.method}: {source.no_row[group.method]}."
                if note not in notes:
                    notes.append(note)
    return notes


# ---------------------------------------------------------------------------------------------- Table 1


TABLE1_QUANTITIES = ("test_accuracy",)
TABLE2_QUANTITIES = ("accuracy", "latency_ms", "speedup_percent")


def table1(collection: Collection, references: References) -> list[Table]:
    tables = []
    for caption, groups in sections(collection, references, TABLE1_QUANTITIES):
        columns = ["Method", "Seeds (n)", "Final exit (%)", "Method output (%)"]
        for source in references.sources:
            columns += [f"{source.label} (%)", f"Δ final exit vs {source.label}"]
        rows = []
        for group in groups:
            if group.placeholder:
                final = Cell(commands=[placeholder_command(group)], note="no run yet")
                row = [text_cell(group.display_label), text_cell("0"), final, Cell(note="no run yet")]
            else:
                final = stat_cell(group.stat("final_accuracy"), group, 2, _commands(group, "final_accuracy", rundir.EVAL), scale=100)
                row = [text_cell(group.display_label), text_cell(_seeds_text(group)), final, _method_output_cell(group)]
            for source in references.sources:
                reference = reference_cell(source, "test_accuracy", group)
                row += [reference, difference_cell(final, reference)]
            rows.append(row)
        notes = _section_notes(groups, references)
        if references.sources:
            notes.append("Δ compares like with like: our final exit (the whole network, every sample run to the end) with the "
                         "reference's number, which for its Baseline and B-Net rows can only be the final exit; for its Proposed "
                         "variants the reference does not say which output it measured. Our method output (the soft output of "
                         "soft-output methods) is shown apart and never compared.")
        tables.append(Table(caption, columns, rows, notes, _labels(references)))
    return tables


def _labels(references: References) -> tuple[str, ...]:
    return tuple(source.label for source in references.sources)


def _seeds_text(group: Group) -> str:
    seeds = ", ".join(str(seed) for seed in group.seeds)
    return f"{seeds} ({group.n})"


def _method_output_cell(group: Group) -> Cell:
    """The method's own output, shown only where it differs from the final exit in some run."""
    pairs = [(run.eval or {}).get("test", {}) for run in group.runs]
    differs = any(
        p.get("method_accuracy") is not None and p.get("final_accuracy") is not None and p["method_accuracy"] != p["final_accuracy"]
        for p in pairs
    )
    if not differs:
        stat = group.stat("method_accuracy")
        if stat is None:
            return Cell(commands=_commands(group, "method_accuracy", rundir.EVAL))
        return Cell(text="= final", note="the method's output is its final exit")
    return stat_cell(group.stat("method_accuracy"), group, 2, _commands(group, "method_accuracy", rundir.EVAL), scale=100)


# ---------------------------------------------------------------------------------------------- Table 2


def table2(collection: Collection, references: References) -> list[Table]:
    tables = []
    for caption, groups in sections(collection, references, TABLE2_QUANTITIES):
        columns = ["Method", "Criterion", "n", "Accuracy (%)"]
        for source in references.sources:
            columns += [f"{source.label} (%)", f"Δ vs {source.label}"]
        columns += ["Latency (ms)", "Plain network (ms)"]
        columns += [f"{source.label} (ms)" for source in references.sources]
        columns += ["Measured speed-up"]
        for source in references.sources:
            columns += [f"{source.label} printed (%)", f"{source.label} recomputed (%)"]
        columns += ["MAC speed-up"]
        rows = []
        for group in groups:
            if group.placeholder:
                def ours():
                    return Cell(commands=[placeholder_command(group)], note="no run yet")

                accuracy, latency, plain, speedup, macs = ours(), ours(), ours(), ours(), ours()
                row = [text_cell(group.display_label), text_cell(DASH), text_cell("0"), accuracy]
            else:
                eval_cmds = _commands(group, "op_accuracy", rundir.EVAL)
                timing_cmds = _commands(group, "latency_ms", rundir.TIMING)
                accuracy = stat_cell(group.stat("op_accuracy"), group, 2, eval_cmds, scale=100)
                latency = stat_cell(group.stat("latency_ms"), group, 3, timing_cmds)
                plain = stat_cell(group.stat("plain_latency_ms"), group, 3, timing_cmds)
                speedup = _speedup_cell(group, timing_cmds)
                macs = stat_cell(group.stat("op_macs_speedup"), group, 2, eval_cmds, suffix="×")
                row = [text_cell(group.display_label), text_cell(_criterion(group)), text_cell(str(group.n)), accuracy]
            for source in references.sources:
                reference = reference_cell(source, "accuracy", group)
                row += [reference, difference_cell(accuracy, reference)]
            row += [latency, plain]
            row += [reference_cell(source, "latency_ms", group) for source in references.sources]
            row.append(speedup)
            for source in references.sources:
                row += [reference_cell(source, "speedup_percent", group), _recomputed_cell(source, group)]
            row.append(macs)
            rows.append(row)
        notes = _section_notes(groups, references) + _timing_notes(groups) + _speedup_notes(groups)
        refs = {(g.model, g.dataset.reference) for g in groups if g.dataset.reference is not None}
        notes += [line for model, dataset in sorted(refs) for line in accuracy_discrepancies(references, model, dataset)]
        tables.append(Table(caption, columns, rows, notes, _labels(references)))
    return tables


def _speedup_cell(group: Group, commands: list[str]) -> Cell:
    """Plain-network latency / early-exit latency (a ratio), and in the reference convention: (ratio - 1) in
    percent; marked "(unsteady)" when its repeats disagreed by more than repro.timing.SPREAD_WARNING."""
    from repro.timing import SPREAD_WARNING

    speedup = group.stat("measured_speedup")
    cell = stat_cell(speedup, group, 2, commands, suffix="×")
    if speedup is not None:
        cell.text += f" ({(speedup.mean - 1) * 100:+.1f} %)"
        spreads = [run_values(run)["speedup_spread"] for run in group.runs]
        if any(isinstance(s, (int, float)) and s > SPREAD_WARNING for s in spreads):
            cell.text += " (unsteady)"
            cell.note = "its timing repeats disagreed by more than 20 %: the machine was busy; time it again on a quiet one"
    return cell


def table2_exits(collection: Collection) -> list[Table]:
    """Table 2, continued: the percentage of test images leaving at each exit at the operating point.

    Exits are aligned on the final one, so networks with fewer exits leave their first columns empty."""
    tables = []
    for caption, groups in sections(collection):
        groups = [g for g in groups if _has_exits(g)]
        if not groups:
            continue
        fractions = {id(g): stack([_get_point(run.eval).get("exit_fractions") for run in g.runs]) for g in groups}
        widest = max([f.shape[1] for f in fractions.values() if f is not None], default=1)
        columns = ["Method", "Criterion", "n"] + [f"Exit {b + 1} (%)" for b in range(widest - 1)] + ["Final (%)"]
        rows = []
        for group in groups:
            row = [text_cell(group.named_label), text_cell(_criterion(group)), text_cell(str(group.n))]
            values = fractions[id(group)]
            if values is None:
                row += [Cell(commands=_commands(group, "op_accuracy", rundir.EVAL)) for _ in range(widest)]
            else:
                mean, std = values.mean(axis=0) * 100, (values.std(axis=0, ddof=1) * 100 if len(values) > 1 else None)
                row += [Cell(blank=True, note="this network has no such exit") for _ in range(widest - len(mean))]
                row += [Cell(text=f"{m:.1f}" + (f" ± {s:.1f}" if std is not None else ""), value=float(m))
                        for m, s in zip(mean, std if std is not None else mean)]
            rows.append(row)
        tables.append(Table(caption, columns, rows))
    return tables


def _get_point(evaluation) -> dict:
    """The test-split operating point of an eval.json ({} when absent)."""
    return (((evaluation or {}).get("operating_point") or {}).get("test")) or {}


def _criterion(group: Group) -> str:
    criteria = {((run.eval or {}).get("operating_point") or {}).get("criterion") for run in group.runs if run.eval}
    if not criteria:
        return DASH
    named = sorted(str(c) for c in criteria if c)
    return ", ".join(named) if named else "none (final exit)"


def _recomputed_cell(source: ReferenceSource, group: Group) -> Cell:
    if group.dataset.reference is None:
        return Cell(note=no_reference_note(source, group))
    value = source.recomputed_speedup(group.model, group.dataset.reference, group.method)
    if value is None:
        return Cell(note=no_reference_note(source, group))
    printed = source.get("speedup_percent", group.model, group.dataset.reference, group.method)
    mark = " ≠" if printed is not None and abs(printed.value - value) > SPEEDUP_TOLERANCE else ""
    return Cell(text=f"{value:.2f}{mark}", value=value, note="recomputed from the source's own printed latencies")


def speedup_discrepancies(references: References) -> list[str]:
    """Every printed speed-up that its source's own latencies do not give, as one sentence each."""
    lines = []
    for source in references.sources:
        for number in source.numbers:
            if number.quantity != "speedup_percent":
                continue
            value = source.recomputed_speedup(number.model, number.dataset, number.method)
            base = source.get("latency_ms", number.model, number.dataset, "baseline")
            this = source.get("latency_ms", number.model, number.dataset, number.method)
            if value is None or abs(value - number.value) <= SPEEDUP_TOLERANCE:
                continue
            row = source.rows.get(number.method, number.method)
            lines.append(
                f"{source.label}, {number.table}, {row}: printed speed-up {reference_text(number.value)} %, but its own "
                f"latencies give {reference_text(base.value)} / {reference_text(this.value)} − 1 = {value:.2f} %. "
                f"Both are shown; the printed one is kept as published."
            )
    return lines


ACCURACY_TOLERANCE = 0.005  # percent: two printed accuracies (two decimals) that are the same number


def accuracy_discrepancies(references: References, model: str | None = None, dataset: str | None = None) -> list[str]:
    """Every Table 2 accuracy of a source that contradicts its own Table 1, as one sentence each: a network
    without exits that has two accuracies, or an early-exit accuracy that is another row's Table 1 figure
    (a number copied across). `model` and `dataset` (reference names) keep one section's."""
    lines = []
    for source in references.sources:
        for number in source.numbers:
            if number.quantity != "accuracy" or model not in (None, number.model) or dataset not in (None, number.dataset):
                continue
            table1_number = source.get("test_accuracy", number.model, number.dataset, number.method)
            if table1_number is None or abs(table1_number.value - number.value) <= ACCURACY_TOLERANCE:
                continue
            same = [source.rows.get(other.method, other.method) for other in source.numbers
                    if other.quantity == "test_accuracy" and (other.model, other.dataset) == (number.model, number.dataset)
                    and other.method != number.method and abs(other.value - number.value) <= ACCURACY_TOLERANCE]
            if number.method != BASELINE_METHOD and not same:
                continue  # early exit may change accuracy; only a copied figure is a contradiction
            row = source.rows.get(number.method, number.method)
            what = "the same network without exits" if number.method == BASELINE_METHOD else "the same network without early exit"
            lines.append(
                f"{source.label}, {number.table}, {row}: accuracy {reference_text(number.value)} %, but its Table 1 gives "
                f"{reference_text(table1_number.value)} % for {what}"
                + (f" ({reference_text(number.value)} % is {' and '.join(same)}'s Table 1 figure)" if same else "")
                + ". Both are shown; each Δ is against its own table's number."
            )
    return lines


def _speedup_notes(groups: list[Group]) -> list[str]:
    notes = []
    if any(group.dataset.reference is not None for group in groups):
        notes.append(
            "Reference speed-ups are (baseline time / time − 1) in percent; ours are plain-network latency / "
            "early-exit latency, a ratio, shown also in the reference convention."
        )
    return notes


def _timing_notes(groups: list[Group]) -> list[str]:
    from repro.timing import SPREAD_WARNING

    devices = sorted({str(run.timing.get("device")) for group in groups for run in group.runs if run.timing})
    notes = [f"Latency measured on {device}: the mean per image at batch size 1 (each image's median over repeated passes); "
             f"the measured speed-up is plain-network over early-exit mean latency, the average cost per image that the MAC "
             f"speed-up predicts." for device in devices]
    unsteady = [run.name for group in groups for run in group.runs
                if isinstance(run_values(run)["speedup_spread"], (int, float)) and run_values(run)["speedup_spread"] > SPREAD_WARNING]
    if unsteady:
        notes.append(f"(unsteady): the timing repeats of {', '.join(unsteady)} disagreed by more than {SPREAD_WARNING:.0%} of the "
                     "speed-up, so the machine was too busy to read a speed-up from them; re-run `repro eval RUN --timing` on a quiet machine.")
    mismatched = [
        run.name
        for group in groups
        for run in group.runs
        if run.timing and run.eval
        and _thresholds(run.timing.get("operating_point")) != _thresholds(run.eval.get("operating_point"))
    ]
    if mismatched:
        notes.append(
            "timing.json was measured at another operating point than eval.json's in: "
            + ", ".join(mismatched) + " (re-run `repro eval RUN --timing`)."
        )
    return notes


def _thresholds(point) -> list | None:
    if not isinstance(point, dict) or point.get("thresholds") is None:
        return None
    return [round(float(t), 9) for t in point["thresholds"]]


# ---------------------------------------------------------------------------------------------- Table 3


def table3(collection: Collection) -> list[Table]:
    """Calibrated operating points (chosen on validation, reported on test)."""
    tables = []
    for caption, groups in sections(collection):
        groups = [g for g in groups if _has_exits(g)]
        if not groups:
            continue
        columns = ["Method", "Criterion", "Target", "n", "Test accuracy (%)", "MAC speed-up", "Leaving at each exit (%)"]
        rows = []
        for group in groups:
            commands = _commands(group, "cal_accuracy", rundir.CALIBRATION)
            calibrations = [run.calibration for run in group.runs if run.calibration]
            fractions = stack([c.get("test", {}).get("exit_fractions") for c in calibrations])
            chance = near_chance(group)
            if chance is not None:
                # A drop measured from an untrained final exit is no drop at all: say so, do not divide by it.
                text = f"final exit near chance ({chance:.1f} %): no accuracy to keep"
                rows.append([text_cell(group.display_label), text_cell(", ".join(sorted({str(c.get("criterion")) for c in calibrations})) or DASH),
                             text_cell(", ".join(sorted({_target_text(c.get("target")) for c in calibrations})) or DASH),
                             text_cell(str(len(calibrations))), text_cell(text), Cell(note=text), Cell(note=text, numeric=False)])
                continue
            rows.append([
                text_cell(group.display_label),
                text_cell(", ".join(sorted({str(c.get("criterion")) for c in calibrations})) or DASH),
                text_cell(", ".join(sorted({_target_text(c.get("target")) for c in calibrations})) or DASH),
                text_cell(str(len(calibrations))),
                stat_cell(group.stat("cal_accuracy"), group, 2, commands, scale=100),
                stat_cell(group.stat("cal_macs_speedup"), group, 2, commands, suffix="×"),
                Cell(text=" · ".join(f"{v:.1f}" for v in fractions.mean(axis=0) * 100), numeric=False)
                if fractions is not None else Cell(commands=commands, numeric=False),
            ])
        notes = ["Thresholds chosen on validation among every criterion that applies to the run (entropy, top "
                 "probability, and the learned gate for proposed): Table 2 shows each method's own default operating "
                 "point instead (the gate at 0.5 for proposed)."]
        if any(near_chance(group) is not None for group in groups):
            notes.append("A final exit near chance (below 1.5 x 1/classes) did not train: a calibrated drop from it "
                         "would read as a large speed-up for free, so none is shown.")
        tables.append(Table(caption, columns, rows, notes))
    return tables


def near_chance(group: Group) -> float | None:
    """The final exit's test accuracy in percent when it is below 1.5 x chance (an exit that did not train), else None."""
    classes = group.config.get("num_classes")
    final = group.stat("final_accuracy")
    if not classes or final is None:
        return None
    return final.mean * 100 if final.mean < 1.5 / classes else None


def _has_exits(group: Group) -> bool:
    counts = {run.eval.get("num_exits") for run in group.runs if run.eval}
    if counts:
        return any(isinstance(c, int) and c > 1 for c in counts)
    return group.method != "baseline" and group.config.get("exits") != []


def _target_text(target) -> str:
    if not isinstance(target, dict):
        return DASH
    if "max_drop" in target:
        return f"max drop {target['max_drop']:g} points"
    if "budget" in target:
        return f"≤ {target['budget']:g} × plain MACs"
    return ", ".join(f"{k}={v}" for k, v in target.items())


# ---------------------------------------------------------------------------------------------- per-exit data


def exit_accuracy(group: Group) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Per-exit test accuracy (percent) over the group's seeds: mean [E], std [E] (ddof = 1; NaN for n = 1), n."""
    values = stack([((run.eval or {}).get("test") or {}).get("exit_accuracy") for run in group.runs])
    if values is None:
        return None
    std = values.std(axis=0, ddof=1) * 100 if len(values) > 1 else np.full(values.shape[1], math.nan)
    return values.mean(axis=0) * 100, std, len(values)


# ---------------------------------------------------------------------------------------------- equal cost

BUDGETS = (0.4, 0.6, 0.8)  # fractions of the plain network's MACs at which methods are compared


def own_criterion(method: str) -> str | None:
    from repro.methods import list_methods, method_class

    return method_class(method).criterion if method in list_methods() else None


def _affordable_points(run, criterion: str, budget: float) -> list[tuple[float, float, float]]:
    """(validation accuracy, mean MACs, test accuracy) of every sweep point of `criterion` whose validation
    mean MACs are at most `budget` x the plain network's; each threshold's validation row is paired with its
    test row (the sweep's thresholds are the same on both splits; nothing is paired where they are not)."""
    sweep = run.sweep
    if sweep is None or sweep.empty:
        return []
    rows = sweep[sweep["criterion"] == criterion]
    val, test = rows[rows["split"] == "val"], rows[rows["split"] == "test"]
    if len(val) != len(test) or not np.allclose(val["threshold"].to_numpy(float), test["threshold"].to_numpy(float), equal_nan=True):
        return []
    cheap = (1.0 / val["macs_speedup"].to_numpy(float)) <= budget * (1 + 1e-12)
    points = zip(val["accuracy"].to_numpy(float), val["mean_macs"].to_numpy(float), test["accuracy"].to_numpy(float), cheap)
    return [(v, m, t) for v, m, t, ok in points if ok and np.isfinite(v) and np.isfinite(t)]


def best_at_budget(runs, criterion: str, budget: float, split: str = "test") -> float | None:
    """Test accuracy (fraction) of the operating point chosen on validation among the points of all `runs`:
    the most accurate validation point of `criterion` whose mean MACs are at most `budget` x the plain
    network's (the cheaper one on a tie), its threshold then read on test. None when no point is that cheap.
    split "val": that point's validation accuracy, the figure a choice between settings is made on."""
    points = [point for run in runs for point in _affordable_points(run, criterion, budget)]
    if not points:
        return None
    val_accuracy, _, test_accuracy = min(points, key=lambda p: (-p[0], p[1]))
    return val_accuracy if split == "val" else test_accuracy


def accuracy_at_budget(run, criterion: str, budget: float, split: str = "test") -> float | None:
    """`best_at_budget` for one run: its own criterion's thresholds swept."""
    return best_at_budget([run], criterion, budget, split)


SWEPT_OPTION = "cost_weight"  # the paper's trade-off knob: one run per lambda, the operating point chosen over all


def swept_value(group: Group):
    """The group's lambda; runs that left it unset trained at the method's default."""
    from repro.methods import list_methods, method_defaults

    value = group.config.get(SWEPT_OPTION)
    if value is None and group.method in list_methods():
        value = method_defaults(group.method).get(SWEPT_OPTION)
    return value


def default_lambda(group: Group) -> bool:
    """Does the group train at its method's default lambda (the one a lambda curve's lines stand for)?"""
    from repro.methods import list_methods, method_defaults

    return group.method in list_methods() and swept_value(group) == method_defaults(group.method).get(SWEPT_OPTION)


def swept_families(groups: list[Group]) -> list[list[Group]]:
    """Groups of one method that differ in `SWEPT_OPTION` alone (the lambda curve): two or more lambdas,
    sorted by lambda. Methods without a lambda never form one."""
    families: dict[tuple, list[Group]] = {}
    for group in groups:
        if swept_value(group) is None:
            continue
        rest = json.dumps({k: v for k, v in group.config.items() if k != SWEPT_OPTION}, sort_keys=True, default=str)
        families.setdefault((group.method, rest), []).append(group)
    return [sorted(family, key=swept_value) for family in families.values() if len({swept_value(g) for g in family}) > 1]


def swept_label(family: list[Group]) -> str:
    return ", ".join(f"{value:g}" for value in sorted({swept_value(g) for g in family}))


def runs_by_seed(family: list[Group]) -> dict:
    """Per seed, its runs over the family's lambdas; seeds trained at one lambda only are left out
    (nothing was swept for them)."""
    by_seed: dict = {}
    for group in family:
        for run in group.runs:
            by_seed.setdefault(run.seed, {}).setdefault(swept_value(group), run)
    return {seed: list(runs.values()) for seed, runs in by_seed.items() if len(runs) > 1}


def _swept_row(family: list[Group], criterion: str, split: str) -> list[Cell]:
    """One row for a lambda curve: per seed, the best validation point under each budget over every lambda's
    sweep (lambda and threshold chosen together on validation), read on test."""
    seeds = runs_by_seed(family)
    label = f"{family[0].method} · λ chosen on val (λ = {swept_label(family)})"  # the criterion has its own column
    row = [text_cell(label, note=f"{SWEPT_OPTION} swept: one run per value, seeds {sorted(seeds, key=str)}"),
           text_cell(criterion), text_cell(str(len(seeds)))]
    for budget in BUDGETS:
        stat = Stat.of([v for v in (best_at_budget(runs, criterion, budget, split) for runs in seeds.values()) if v is not None])
        if stat is None:
            row.append(Cell(note=f"no {criterion} threshold reaches {budget:g} x the plain network's MACs on validation"))
            continue
        stat = stat.scaled(100)
        text = f"{stat.mean:.2f}" + (f" ± {stat.std:.2f}" if stat.n > 1 else "") + (f" (n={stat.n})" if stat.n < len(seeds) else "")
        row.append(Cell(text=text, value=stat.mean))
    return row


def _budget_row(group: Group, criterion: str | None, split: str, label: str | None = None) -> list[Cell]:
    """The group at each budget, `criterion`'s thresholds chosen on validation (mean ± std over seeds)."""
    row = [text_cell(label or group.display_label), text_cell(criterion or DASH), text_cell(str(group.n))]
    for budget in BUDGETS:
        values = [accuracy_at_budget(run, criterion, budget, split) for run in group.runs] if criterion else []
        stat = Stat.of([v for v in values if v is not None])
        cell = stat_cell(stat, group, 2, [], scale=100)
        if stat is None:
            cell = Cell(note=f"no {criterion} threshold reaches {budget:g} x the plain network's MACs on validation")
        row.append(cell)
    return row


def equal_cost_table(collection: Collection, split: str = "test") -> list[Table]:
    """Each method at 0.4, 0.6 and 0.8 of the plain network's MACs, its own criterion's thresholds chosen
    on validation and read on test (mean ± std over seeds): the paper's claim is that `proposed` is at or
    above B-Net at every one of these costs. split "val": the same points' validation accuracy, on which
    a choice between a method's settings is made (test stays untouched by it). A method trained at several
    lambdas also gets one row with lambda chosen on validation together with the threshold."""
    tables = []
    for caption, groups in sections(collection):
        groups = [g for g in groups if _has_exits(g) and any(run.sweep is not None for run in g.runs)]
        if not groups:
            continue
        columns = ["Method", "Criterion", "n"] + [f"{budget:g} × plain MACs (%)" for budget in BUDGETS]
        rows = [_budget_row(group, own_criterion(group.method), split) for group in groups]
        families = [family for family in swept_families(groups) if own_criterion(family[0].method)]
        rows += [_swept_row(family, own_criterion(family[0].method), split) for family in families]
        read = "read on test" if split == "test" else "its validation accuracy"
        notes = ["Each cell: the most accurate validation point of the method's own exit criterion whose mean MACs are at "
                 f"most that fraction of the network without exits, {read}; a dash where no threshold is that cheap "
                 "(the first exit alone costs about 0.31 x plain for VGG-13 with conv branches)."]
        if families:
            notes.append("A row \"λ chosen on val\": per seed, the most accurate validation point under "
                         "each budget among the sweeps of all its λ runs (λ and the threshold chosen together) (λ weighs the expected cost in the paper's loss: its "
                         "way to buy speed), read like the others; seeds trained at one λ only are left out.")
        tables.append(Table(caption, columns, rows, notes))
    return tables


def labels_table(collection: Collection) -> list[Table]:
    """The legend of the row labels: each row named `method · tag` (it differs from its method's defaults,
    or from the rest of its table) with the full list of the options in which it differs, once, instead of
    inline in every row of every table."""
    tables = []
    for caption, groups in sections(collection):
        rows = [[text_cell(group.label), text_cell(group.variant), text_cell(", ".join(run.name for run in group.members))]
                for group in groups if group.variant]
        if rows:
            tables.append(Table(caption, ["Label", "Options in which it differs", "Runs"], rows))
    return tables


def criteria_table(collection: Collection) -> list[Table]:
    """Every trained network under every exit criterion its sweep has (entropy, top probability, its gates),
    at the equal-cost budgets, chosen on validation and read on test: separates what a method's training
    gives from what its exit criterion gives. A lambda curve shows its default lambda only."""
    tables = []
    for caption, groups in sections(collection):
        groups = [g for g in groups if _has_exits(g) and any(run.sweep is not None for run in g.runs)]
        in_family = {id(g) for family in swept_families(groups) for g in family}
        rows = []
        for group in groups:
            if id(group) in in_family and not default_lambda(group):
                continue
            criteria = sorted({str(c) for run in group.runs if run.sweep is not None for c in run.sweep["criterion"].unique()})
            own = own_criterion(group.method)
            for criterion in sorted(criteria, key=lambda c: (c != own, c)):
                row = _budget_row(group, criterion, "test")
                if criterion == own:  # in the criterion's column, so the label stays short
                    row[1] = text_cell(f"{criterion} (its own)")
                rows.append(row)
        if rows:
            columns = ["Method", "Criterion", "n"] + [f"{budget:g} × plain MACs (%)" for budget in BUDGETS]
            fitted = any(str(row[1].text).startswith("fitted-") for row in rows)
            tables.append(Table(caption, columns, rows, [
                "Each cell as in the table above (thresholds chosen on validation, read on test), for every criterion the "
                "run's sweep holds: the rows of one network differ only in how it decides to exit." + (
                    " The fitted-gate and fitted-features policies (`repro fit-gates`) are fitted on one half of "
                    "validation and their thresholds chosen on the other half." if fitted else "")]))
    return tables


def routing_table(collection: Collection) -> list[Table]:
    """Where each soft-output method's soft output routes validation samples after its last epoch (the
    routing mass m_b of metrics.csv, mean over seeds) beside how well its first and final exits classify:
    the collapse of the paper's literal loss is a row with about 100% at exit 1 and a final exit at chance."""
    tables = []
    for caption, groups in sections(collection):
        rows = []
        for group in groups:
            last = [run.metrics.iloc[-1] for run in group.runs if run.metrics is not None and "route_exit1" in run.metrics
                    and len(run.metrics)]
            exits = 1 + max((int(c[len("route_exit"):]) for c in last[0].index if c.startswith("route_exit")), default=0) if last else 0
            routes = np.array([[float(row.get(f"route_exit{b}", np.nan)) for b in range(exits)] for row in last], dtype=float)
            if exits < 2 or not np.isfinite(routes).all():
                continue  # nothing routed between exits, or an epoch that logged no routing
            mean_route = routes.mean(axis=0)
            deeper = 1 + int(np.argmax(mean_route[1:]))
            first_acc = Stat.of([run.eval["test"]["exit_accuracy"][0] for run in group.runs if run.eval])
            chance = near_chance(group)
            rows.append([
                text_cell(group.display_label), text_cell(str(group.n)),
                text_cell(", ".join(str(epoch) for epoch in sorted({int(row["epoch"]) for row in last}))),
                stat_cell(Stat.of([row["route_exit0"] for row in last]), group, 1, [], scale=100),
                Cell(text=f"{100 * mean_route[deeper]:.1f} ({'final' if deeper == exits - 1 else f'exit {deeper + 1}'})",
                     value=float(mean_route[deeper])),
                stat_cell(first_acc, group, 2, [], scale=100),
                stat_cell(group.stat("final_accuracy"), group, 2, [], scale=100, suffix=" (chance)" if chance is not None else ""),
            ])
        if rows:
            columns = ["Method", "n", "Epochs", "Routed to exit 1 (%)", "Largest share of a deeper exit (%)",
                       "Exit 1, test (%)", "Final exit, test (%)"]
            notes = ["Routing: the share of validation samples the soft output sends to an exit (m_b = g_b prod_{k<b} (1 - g_k)) "
                     "after the run's last epoch; \"(chance)\": a final exit below 1.5 x 1/classes, one that did not train."]
            tables.append(Table(caption, columns, rows, notes))
    return tables
