"""The report's figures: plain data in, a matplotlib Figure out (Agg; no pyplot state, nothing written).

- `exit_accuracy_figure`: test accuracy of every exit, per method (the reproduction report's Figure 3,
  for every exit rather than three), and the soft output of soft-output methods beside the final exit;
  one panel per model x dataset.
- `accuracy_cost_figure`: accuracy against relative cost (mean MACs / plain-network MACs) from the
  threshold sweeps, one panel per model x dataset, one line per method and criterion: its Pareto front
  (sweep.csv's flag: no other point both more accurate and cheaper), every swept point faint, and the
  operating point of Table 2 as a star.
- `training_figure`: per epoch, the final exit's training cross-entropy (the one loss every method has,
  so methods compare) and the validation accuracy of the method's output (metrics.csv).
- `exit_fractions_figure`: the fraction of test images leaving at each exit at the operating point.
- `routing_figure`: where the soft output routes validation samples during training (the routing mass
  m_b of every exit per epoch, metrics.csv): the collapse of the paper's literal loss is m_1 going to 1.

Readable without the text: one colour and one marker per method (variants of a method share its colour
and differ in line style), every legend names what it shows, axes have units. Everything a user controls
(run names, folders, option values) is drawn literally: `$` would otherwise start matplotlib's mathtext.

The `*_panels(collection)` functions turn collected runs into that plain data (means over seeds);
repro.report.render is the one place that saves figures.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from repro.report.collect import METHOD_ORDER, Collection, Group, stack
from repro.report.tables import (BUDGETS, default_lambda, exit_accuracy, own_criterion, runs_by_seed, sections,
                                 swept_families, swept_label, swept_value)

# Colours and markers by method, stable across figures; variants of one method share them and differ in line style.
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
METHOD_MARKERS = {"baseline": "s", "bnet": "o", "proposed": "^", "report-proposed": "D", "report-maxprob": "v"}
LINE_STYLES = ("-", "--", ":", "-.")
LEVEL_STYLES = ("--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)))  # levels (networks without exits) by variant
CRITERION_STYLES = {"entropy": "-", "maxprob": "--", "gate": ":"}
PANEL_SIZE = (5.6, 3.6)  # inches per panel
SINGLE_PANEL_WIDTH = 9.0  # inches
DPI = 110


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    std: np.ndarray | None = None  # spread over seeds (ddof = 1), same length as y
    method: str = ""  # picks the colour and marker
    variant: int = 0  # picks the line style among one method's variants
    kind: str = ""  # training curves: "train_ce" or "val_accuracy"; own-criterion fronts: "lambda curve"
    extra: tuple[float, float] | None = None  # per-exit figure: the soft output (accuracy %, std)
    stack: np.ndarray | None = None  # routing figure: [exits, epochs] mean routing mass


@dataclass
class CostSeries(Series):
    """x, y: the Pareto front as a step function (mean over seeds of the best accuracy at cost <= x), std its spread."""

    criterion: str = ""
    points: tuple[np.ndarray, np.ndarray] | None = None  # every swept (relative cost, accuracy %) of every seed
    operating_point: tuple[float, float] | None = None  # (relative cost, accuracy %)


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)
    reference_lines: list[tuple[str, float, str, int]] = field(default_factory=list)  # (label, accuracy %, method, variant)
    marks: list[tuple[str, float, float, str]] = field(default_factory=list)  # (text, relative cost, accuracy %, method)


def literal(text: str) -> str:
    """Text drawn as written: a `$` would start mathtext (and `$x^$` would crash the figure)."""
    return str(text).replace("$", r"\$")


def colour(method: str, variant: int = 0):
    """The method's colour; its variants (other settings of the same method) are lighter shades of it."""
    from matplotlib.colors import to_rgb

    index = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER) + sum(map(ord, method))
    base = to_rgb(PALETTE[index % len(PALETTE)])
    mix = min(0.6, 0.3 * variant)
    return tuple(c + (1.0 - c) * mix for c in base)


def spread_colour(method: str, variant: int, count: int):
    """The method's colour for one of `count` variants, spread from darker to lighter shades, so that many
    variants on one plot (a study's settings) stay apart; up to three use `colour`'s shades."""
    if count <= 3:
        return colour(method, variant)
    base = colour(method)
    mix = -0.55 + 1.2 * variant / (count - 1)  # -0.55 (dark) .. 0.65 (light)
    return tuple(c * (1 + mix) if mix < 0 else c + (1.0 - c) * mix for c in base)


def marker(method: str) -> str:
    return METHOD_MARKERS.get(method, "P")


def _grid(count: int, columns: int = 2) -> tuple[Figure, list]:
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    # One panel alone gets the width of two, so it is not a thumbnail in a wide report.
    width = PANEL_SIZE[0] * columns if columns > 1 else SINGLE_PANEL_WIDTH
    figure = Figure(figsize=(width, PANEL_SIZE[1] * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


TITLE_WIDTH = 48  # characters per title line: two panels side by side, each with a legend, never overlap


def _style(axis, title: str, xlabel: str, ylabel: str) -> None:
    axis.set_title(literal(textwrap.fill(title, TITLE_WIDTH, break_on_hyphens=False)), fontsize=11)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(True, alpha=0.3)
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)


# Characters per legend line: a grid's labels name every option that varies (a study of five options gives
# ~90 characters), and an unwrapped legend beside the axes would squeeze them to nothing.
LEGEND_WIDTH = 50
LEGEND_MARGIN_INCHES = 1.0  # a panel's title, tick labels and axis label around its legend


def _legend(axis, outside: bool = False, handles=None) -> None:
    """A legend inside the axes, or beside them (right) when there are many lines to keep clear of."""
    handles = handles if handles is not None else axis.get_legend_handles_labels()[0]
    if not handles:
        return
    labels = [textwrap.fill(handle.get_label(), LEGEND_WIDTH, break_on_hyphens=False) for handle in handles]
    if outside:
        axis.legend(handles=handles, labels=labels, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axis.legend(handles=handles, labels=labels, fontsize=8, frameon=False, loc="best")
    _fit_height(axis, labels)


def _fit_height(axis, labels: list[str]) -> None:
    """Make every row of the figure at least as tall as this legend (8 pt lines, half a line between
    entries, room for title and axis labels): a taller legend would squeeze the axes to nothing."""
    lines = sum(label.count("\n") + 1.5 for label in labels)
    needed = lines * 8 * 1.25 / 72 + LEGEND_MARGIN_INCHES
    figure, rows = axis.figure, axis.get_subplotspec().get_gridspec().nrows
    if figure.get_figheight() < rows * needed:
        figure.set_figheight(rows * needed)


def _exit_ticks(axis, count: int, extra: str | None = None) -> None:
    """x ticks 1..count-1 for the early exits and "final" for the last (plus `extra` one step further)."""
    positions = list(range(1, count + 1)) + ([count + 1] if extra else [])
    labels = [str(b) for b in range(1, count)] + ["final"] + ([extra] if extra else [])
    axis.set_xticks(positions, labels)


def _margin_limits(axis, values: list[float]) -> None:
    """y limits with room above and below the data, so that no line sits on the frame."""
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    pad = max(2.0, 0.08 * (high - low))
    axis.set_ylim(max(0.0, low - pad), min(100.0, high + pad) if high <= 100 else high + pad)


def mean_front(fronts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average Pareto fronts of several seeds: at each cost where some front steps, the best accuracy each
    seed reaches at that cost or less; kept only where every seed reaches one. Returns cost, mean, std (ddof = 1)."""
    grid = np.unique(np.concatenate([cost for cost, _ in fronts]))
    best = np.full((len(fronts), len(grid)), np.nan)
    for row, (cost, accuracy) in enumerate(fronts):
        order = np.argsort(cost, kind="stable")
        running = np.maximum.accumulate(accuracy[order])
        index = np.searchsorted(cost[order], grid, side="right") - 1
        best[row] = np.where(index >= 0, running[np.clip(index, 0, None)], np.nan)
    keep = ~np.isnan(best).any(axis=0)
    best, grid = best[:, keep], grid[keep]
    std = best.std(axis=0, ddof=1) if len(fronts) > 1 else np.full(len(grid), np.nan)
    return grid, best.mean(axis=0), std


# ---------------------------------------------------------------------------------------------- drawing


def exit_accuracy_figure(panels: list[Panel]) -> Figure:
    figure, axes = _grid(len(panels), columns=1)  # one panel a row: the legend beside it needs the width
    for axis, panel in zip(axes, panels):
        values = []
        widest = max((len(s.x) for s in panel.series), default=1)
        soft = any(series.extra is not None for series in panel.series)
        handles = []  # in drawing order: matplotlib would list plain lines before error-bar lines
        for series in panel.series:
            kwargs = dict(color=colour(series.method), linestyle=LINE_STYLES[series.variant % 4], marker=marker(series.method),
                          label=literal(series.label))
            if series.std is not None and np.isfinite(series.std).any():
                handles.append(axis.errorbar(series.x, series.y, yerr=np.nan_to_num(series.std), capsize=3, **kwargs))
            else:
                handles += axis.plot(series.x, series.y, **kwargs)
            values += list(series.y)
            if series.extra is not None:  # the soft output, one step right of the final exit
                accuracy, std = series.extra
                handles.append(axis.errorbar([widest + 1], [accuracy], yerr=[0 if not np.isfinite(std) else std],
                                             color=colour(series.method), marker="*", markersize=12, capsize=3,
                                             linestyle="none", label=literal(f"{series.label}: soft output")))
                values.append(accuracy)
        for label, value, method, variant in panel.reference_lines:
            # Two plain networks (two widths) on one panel: told apart by the dash pattern.
            handles.append(axis.axhline(value, color=colour(method), linestyle=LEVEL_STYLES[variant % len(LEVEL_STYLES)],
                                        linewidth=1.2, label=literal(label)))
            values.append(value)
        _exit_ticks(axis, widest, "soft\noutput" if soft else None)
        _margin_limits(axis, values)
        _style(axis, panel.title, "exit (shallow → final)", "test accuracy (%)")
        _legend(axis, outside=len(panel.series) + len(panel.reference_lines) > 4, handles=handles)
    return figure


def accuracy_cost_figure(panels: list[Panel]) -> Figure:
    figure, axes = _grid(len(panels), columns=1)
    for axis, panel in zip(axes, panels):
        handles = []
        for series in panel.series:
            tint, style = colour(series.method, series.variant), CRITERION_STYLES.get(series.criterion, LINE_STYLES[series.variant % 4])
            if series.points is not None:
                axis.scatter(*series.points, s=7, color=tint, alpha=0.2, linewidths=0)
            line, = axis.plot(series.x, series.y, drawstyle="steps-post", color=tint, linestyle=style,
                              marker=marker(series.method), markersize=3, linewidth=1.8, label=literal(series.label))
            handles.append(line)
            if series.std is not None and np.isfinite(series.std).any():
                axis.fill_between(series.x, series.y - series.std, series.y + series.std, step="post", color=tint, alpha=0.12)
            if series.operating_point is not None:
                axis.plot(*series.operating_point, marker="*", markersize=14, color=tint, markeredgecolor="black", linestyle="none")
        handles.append(Line2D([], [], marker="*", markersize=11, color="white", markeredgecolor="black", linestyle="none",
                              label="operating point of Table 2"))
        handles.append(Line2D([], [], marker="o", markersize=4, color="grey", alpha=0.4, linestyle="none",
                              label="every swept threshold"))
        axis.axvline(1.0, color="black", linewidth=0.8, alpha=0.5)
        _style(axis, panel.title, "mean MACs / plain network's", "test accuracy (%)")
        _legend(axis, outside=True, handles=handles)
    return figure


def own_criterion_figure(panels: list[Panel]) -> Figure:
    """One front per method on its own exit criterion, the budgets of the equal-cost table marked; a lambda
    curve's operating points labelled with their lambda."""
    # One panel a row: its legend names every lambda and variant, and two such panels side by side leave the
    # axes too narrow for their own labels.
    figure, axes = _grid(len(panels), columns=1)
    for axis, panel in zip(axes, panels):
        handles = []
        for budget in BUDGETS:
            axis.axvline(budget, color="grey", linewidth=0.8, linestyle=":", alpha=0.8)
        axis.axvline(1.0, color="black", linewidth=0.8, alpha=0.5)
        counts = {method: 1 + max(s.variant for s in panel.series if s.method == method and s.kind != "lambda curve")
                  for method in {s.method for s in panel.series if s.kind != "lambda curve"}}
        for series in panel.series:
            swept = series.kind == "lambda curve"  # dark and dashed: the line the lambda runs make together
            tint = tuple(0.55 * c for c in colour(series.method)) if swept else spread_colour(series.method, series.variant, counts[series.method])
            line, = axis.plot(series.x, series.y, drawstyle="steps-post", color=tint,
                              linestyle="--" if swept else LINE_STYLES[series.variant % 4], marker=marker(series.method),
                              markersize=3, linewidth=2.2 if swept else 1.8, label=literal(series.label))
            handles.append(line)
            if series.std is not None and np.isfinite(series.std).any():
                axis.fill_between(series.x, series.y - series.std, series.y + series.std, step="post", color=tint, alpha=0.12)
        for index, (text, cost, accuracy, method) in enumerate(sorted(panel.marks, key=lambda mark: mark[1:3])):
            axis.plot(cost, accuracy, marker=marker(method), markersize=7, color=colour(method), markeredgecolor="black",
                      linestyle="none")
            # Labels alternate below and above their points: the large lambdas all sit at exit 1's cost.
            axis.annotate(literal(text), (cost, accuracy), textcoords="offset points", xytext=(5, -10 if index % 2 == 0 else 4),
                          fontsize=7)
        if panel.marks:
            handles.append(Line2D([], [], marker=marker(panel.marks[0][3]), markersize=6, color=colour(panel.marks[0][3]),
                                  markeredgecolor="black", linestyle="none", label="one λ run at its Table 2 operating point"))
        _style(axis, panel.title, "mean MACs / plain network's (dotted: the equal-cost budgets)", "test accuracy (%)")
        _legend(axis, outside=True, handles=handles)
    return figure


def training_figure(panels: list[Panel]) -> Figure:
    """Two axes per model x dataset: the final exit's training CE, and the method output's validation accuracy."""
    figure, axes = _grid(2 * len(panels), columns=2)
    for index, panel in enumerate(panels):
        loss_axis, accuracy_axis = axes[2 * index], axes[2 * index + 1]
        for series in panel.series:
            tint, style = colour(series.method), LINE_STYLES[series.variant % 4]
            axis = loss_axis if series.kind == "train_ce" else accuracy_axis
            axis.plot(series.x, series.y, color=tint, label=literal(series.label), marker=marker(series.method),
                      markersize=4, linestyle=style)
            if series.std is not None and np.isfinite(series.std).any():
                axis.fill_between(series.x, series.y - series.std, series.y + series.std, color=tint, alpha=0.15)
        for axis in (loss_axis, accuracy_axis):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        _style(loss_axis, f"{panel.title}: the final exit's training loss", "epoch", "cross-entropy of the final exit (nats)")
        _style(accuracy_axis, f"{panel.title}: validation accuracy", "epoch", "accuracy of the method's output (%)")
        _legend(loss_axis)
        _legend(accuracy_axis)
    return figure


def exit_fractions_figure(panels: list[Panel]) -> Figure:
    figure, axes = _grid(len(panels))
    for axis, panel in zip(axes, panels):
        count = max(1, len(panel.series))
        width = 0.8 / count
        for index, series in enumerate(panel.series):
            axis.bar(series.x + (index - (count - 1) / 2) * width, series.y, width=width, color=colour(series.method),
                     hatch=("", "//", "..", "xx")[series.variant % 4], edgecolor="white", label=literal(series.label))
        _exit_ticks(axis, max((len(s.x) for s in panel.series), default=1))
        axis.set_ylim(0, 100)
        _style(axis, panel.title, "exit (shallow → final)", "test images leaving at this exit (%)")
        _legend(axis)
    return figure


def routing_figure(panels: list[Panel]) -> Figure:
    """One axis per soft-output run group: the routing mass of every exit per epoch, stacked to 1."""
    series_list = [(panel.title, series) for panel in panels for series in panel.series]
    figure, axes = _grid(len(series_list))
    for axis, (title, series) in zip(axes, series_list):
        exits = series.stack.shape[0]
        shades = [_shade(b, exits) for b in range(exits)]
        labels = [f"exit {b + 1}" for b in range(exits - 1)] + ["final exit"]
        axis.stackplot(series.x, series.stack * 100, colors=shades, labels=labels, alpha=0.9)
        axis.set_ylim(0, 100)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        _style(axis, f"{title}: {series.label}", "epoch", "validation samples routed here (%)")
        _legend(axis, outside=True)
    return figure


def _shade(index: int, count: int) -> tuple:
    """Exits from shallow (light) to final (dark), on one hue, so the collapse onto exit 1 reads as light."""
    from matplotlib import colormaps

    return colormaps["viridis"](0.95 - 0.85 * index / max(1, count - 1))


# ---------------------------------------------------------------------------------------------- data


def _variant_index(groups: list[Group]) -> dict[int, int]:
    seen: dict[str, int] = {}
    index = {}
    for group in groups:
        index[id(group)] = seen.get(group.method, 0)
        seen[group.method] = index[id(group)] + 1
    return index


def exit_accuracy_panels(collection: Collection) -> list[Panel]:
    panels = []
    for caption, groups in sections(collection):
        panel, variants = Panel(caption), _variant_index(groups)
        for group in groups:
            result = exit_accuracy(group)
            if result is None:
                continue
            mean, std, n = result
            label = f"{group.named_label} (n={n})"
            if len(mean) == 1:
                # A network without early exits has one point: draw it as a level across the exits.
                panel.reference_lines.append((f"{label}, no early exits", float(mean[0]), group.method, variants[id(group)]))
                continue
            series = Series(label, np.arange(1, len(mean) + 1), mean, std, group.method, variants[id(group)])
            soft = group.stat("method_accuracy")
            final = group.stat("final_accuracy")
            if soft is not None and final is not None and abs(soft.mean - final.mean) > 1e-12:
                series.extra = (soft.mean * 100, soft.std * 100)
            panel.series.append(series)
        if panel.series or panel.reference_lines:
            panels.append(panel)
    return panels


def _fronts(runs) -> dict[str, tuple[list, list]]:
    """Per criterion: each seed's test-split Pareto front and all its points, as (relative cost, accuracy %).

    Relative cost = 1 / MAC speed-up = mean MACs / plain-network MACs. Sweep thresholds come from each
    seed's own validation scores, so seeds are averaged along cost (`mean_front`), not threshold by threshold.
    """
    result: dict[str, tuple[list, list]] = {}
    for run in runs:
        if run.sweep is None or run.sweep.empty:
            continue
        test = run.sweep[run.sweep["split"] == "test"]
        for criterion, rows in test.groupby("criterion", sort=True):
            cost = 1.0 / rows["macs_speedup"].to_numpy(float)
            accuracy = rows["accuracy"].to_numpy(float) * 100
            on_front = rows["pareto"].to_numpy(bool)
            fronts, points = result.setdefault(str(criterion), ([], []))
            fronts.append((cost[on_front], accuracy[on_front]))
            points.append((cost, accuracy))
    return result


def accuracy_cost_panels(collection: Collection) -> list[Panel]:
    panels = []
    for caption, groups in sections(collection):
        panel, variants = Panel(caption), _variant_index(groups)
        for group in groups:
            point = None
            accuracy, speedup = group.stat("op_accuracy"), group.stat("op_macs_speedup")
            if accuracy is not None and speedup is not None:
                point = (1.0 / speedup.mean, accuracy.mean * 100)
            for criterion, (fronts, points) in _fronts(group.runs).items():
                fronts = [front for front in fronts if len(front[0])]
                if not fronts:
                    continue
                cost, mean, std = mean_front(fronts)
                everything = (np.concatenate([p[0] for p in points]), np.concatenate([p[1] for p in points]))
                own = _operating_criterion(group) == criterion
                panel.series.append(CostSeries(
                    f"{group.named_label}, {criterion} threshold (n={len(fronts)})", cost, mean, std, method=group.method,
                    variant=variants[id(group)], criterion=criterion, points=everything, operating_point=point if own else None,
                ))
        if panel.series:
            panels.append(panel)
    return panels


def own_criterion_panels(collection: Collection) -> list[Panel]:
    """Each early-exit group on its own exit criterion only (bnet and report-proposed: entropy, report-maxprob:
    top probability, proposed: its gate), the mean test front over seeds. A lambda curve (groups differing in
    cost_weight alone) is one more line: per seed, the test front of all its lambda runs' points together;
    its groups other than the method's default lambda are drawn as their operating points, not as lines."""
    panels = []
    for caption, groups in sections(collection):
        panel, variants = Panel(caption), _variant_index(groups)
        families = [family for family in swept_families(groups) if own_criterion(family[0].method)]
        in_family = {id(group) for family in families for group in family}
        for group in groups:
            criterion = own_criterion(group.method)
            if criterion is None:
                continue
            if id(group) in in_family and not default_lambda(group):
                accuracy, speedup = group.stat("op_accuracy"), group.stat("op_macs_speedup")
                if accuracy is not None and speedup is not None:
                    panel.marks.append((f"λ={swept_value(group):g}", 1.0 / speedup.mean, accuracy.mean * 100, group.method))
                continue
            fronts = [front for front in _fronts(group.runs).get(criterion, ([], []))[0] if len(front[0])]
            if fronts:
                cost, mean, std = mean_front(fronts)
                panel.series.append(Series(f"{group.named_label}, {criterion} threshold (n={len(fronts)})", cost, mean, std,
                                           method=group.method, variant=variants[id(group)]))
        for family in families:
            method, criterion = family[0].method, own_criterion(family[0].method)
            fronts = []
            for runs in runs_by_seed(family).values():
                points = [p for run in runs for p in _fronts([run]).get(criterion, ([], []))[1]]
                if points:  # every point of every lambda: mean_front's running maximum makes them one front
                    fronts.append((np.concatenate([c for c, _ in points]), np.concatenate([a for _, a in points])))
            if fronts:
                cost, mean, std = mean_front(fronts)
                panel.series.append(Series(f"{method}, λ and {criterion} threshold swept (λ = {swept_label(family)}; n={len(fronts)})",
                                           cost, mean, std, method=method, kind="lambda curve"))
        if panel.series:
            panels.append(panel)
    return panels


def _operating_criterion(group: Group) -> str | None:
    for run in group.runs:
        criterion = ((run.eval or {}).get("operating_point") or {}).get("criterion")
        if criterion:
            return criterion
    return None


def _final_ce_column(frame: pd.DataFrame) -> str | None:
    """The final exit's training CE: train_ce_final (baseline) or the last train_ce_exit{b}."""
    if "train_ce_final" in frame:
        return "train_ce_final"
    columns = sorted((c for c in frame if c.startswith("train_ce_exit")), key=lambda c: int(c[len("train_ce_exit"):]))
    return columns[-1] if columns else None


def training_panels(collection: Collection) -> list[Panel]:
    panels = []
    for caption, groups in sections(collection):
        panel, variants = Panel(caption), _variant_index(groups)
        for group in groups:
            frames = [run.metrics for run in group.runs if run.metrics is not None and "epoch" in run.metrics]
            if not frames:
                continue
            label = f"{group.named_label} (n={len(frames)})"
            columns = (("train_ce", _final_ce_column(frames[0]), 1), ("val_accuracy", "val_acc_method", 100))
            for kind, column, scale in columns:
                if column is None or not all(column in frame for frame in frames):
                    continue
                by_epoch = pd.concat([frame[["epoch", column]] for frame in frames], ignore_index=True).groupby("epoch", sort=True)[column]
                mean, std = by_epoch.mean() * scale, by_epoch.std(ddof=1) * scale
                panel.series.append(Series(label, mean.index.to_numpy(float), mean.to_numpy(), std.to_numpy(), group.method,
                                           variants[id(group)], kind=kind))
        if panel.series:
            panels.append(panel)
    return panels


def exit_fractions_panels(collection: Collection) -> list[Panel]:
    panels = []
    for caption, groups in sections(collection):
        panel, variants = Panel(caption), _variant_index(groups)
        for group in groups:
            fractions = stack([((run.eval or {}).get("operating_point") or {}).get("test", {}).get("exit_fractions") for run in group.runs])
            if fractions is None or fractions.shape[1] < 2:
                continue  # a network without early exits sends everything to its one exit
            panel.series.append(Series(group.named_label, np.arange(1, fractions.shape[1] + 1), fractions.mean(axis=0) * 100,
                                       None, group.method, variants[id(group)]))
        if panel.series:
            panels.append(panel)
    return panels


def routing_panels(collection: Collection) -> list[Panel]:
    """Soft-output groups whose metrics.csv logs the routing mass (route_exit{b}), mean over seeds per epoch."""
    panels = []
    for caption, groups in sections(collection):
        panel = Panel(caption)
        for group in groups:
            frames = [run.metrics for run in group.runs if run.metrics is not None and "route_exit0" in run.metrics]
            if not frames:
                continue
            columns = sorted((c for c in frames[0] if c.startswith("route_exit")), key=lambda c: int(c[len("route_exit"):]))
            merged = pd.concat([frame[["epoch", *columns]] for frame in frames], ignore_index=True).groupby("epoch", sort=True).mean()
            label = f"{group.named_label} (n={len(frames)})"
            panel.series.append(Series(label, merged.index.to_numpy(float), np.zeros(len(merged)), method=group.method,
                                       stack=merged[columns].to_numpy().T))
        if panel.series:
            panels.append(panel)
    return panels


FIGURES = {
    # file name: (title, caption, panels from a collection, drawing)
    "exit-accuracy.png": ("Per-exit test accuracy", "Test accuracy of every exit (mean over seeds, bars: ± std), and the soft "
                          "output of soft-output methods (star) right of the final exit; networks without early exits as "
                          "levels (dashed, dotted for a second setting such as another width). The reproduction report's Figure 3, for every exit.",
                          exit_accuracy_panels, exit_accuracy_figure),
    "accuracy-cost.png": ("Accuracy against cost", "Threshold sweeps on the test split: one colour and marker per method, one "
                          "line style per exit criterion (solid entropy, dashed top probability, dotted learned gate). Faint "
                          "dots: every swept threshold of every seed; lines: the Pareto front (mean over seeds of the best "
                          "accuracy at that cost or less; band ± std); stars: the operating point of Table 2. Cost 1 is the "
                          "network without exits.",
                          accuracy_cost_panels, accuracy_cost_figure),
    "own-criterion.png": ("Each method on its own criterion", "Each early-exit method on the exit criterion it is meant "
                          "to use (bnet and report-proposed: entropy; report-maxprob: top probability; proposed: its learned "
                          "gate): its test-split front (the best test accuracy at that test cost or less), mean over seeds (band: "
                          "± std). A lambda curve is one line, the front of all its lambdas' points together; its runs other than "
                          "the default lambda are marked at their Table 2 operating point. These fronts are chosen on test, an "
                          "upper bound on the equal-cost table, whose points are chosen on validation. Dotted: 0.4, 0.6 and 0.8 "
                          "x plain MACs, where the table compares.",
                          own_criterion_panels, own_criterion_figure),
    "exit-fractions.png": ("Where images leave", "Percentage of test images leaving at each exit at the operating point "
                           "(mean over seeds).", exit_fractions_panels, exit_fractions_figure),
    "training.png": ("Training curves", "Per epoch, mean over seeds (band: ± std): the final exit's training cross-entropy "
                     "(a loss every method has, so methods compare) and the validation accuracy of the method's output.",
                     training_panels, training_figure),
    "routing.png": ("Where the soft output routes during training", "For soft-output methods: the share of validation samples "
                    "the soft output sends to each exit (routing mass m_b = g_b prod_{k<b} (1 - g_k)) after every epoch, "
                    "shallow exits light, the final exit dark. The paper's literal loss collapses: exit 1 takes everything.",
                    routing_panels, routing_figure),
}
