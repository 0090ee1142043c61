"""The report's figures: plain data in, a matplotlib Figure out (Agg; no pyplot state, nothing written).

- `exit_accuracy_figure`: test accuracy of every exit, per method (the reproduction report's Figure 3,
  for every exit rather than three), one panel per model x dataset.
- `accuracy_cost_figure`: accuracy against relative cost (mean MACs / plain-network MACs) from the
  threshold sweeps, one panel per model x dataset, one line per method and criterion: its Pareto front
  (sweep.csv's flag: no other point both more accurate and cheaper), every swept point faint, and the
  operating point starred.
- `training_figure`: training and validation loss and validation accuracy per epoch (metrics.csv).
- `exit_fractions_figure`: the fraction of test images leaving at each exit at the operating point.

The `*_panels(collection)` functions turn collected runs into that plain data (means over seeds);
repro.report.render is the one place that saves figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from repro.report.collect import METHOD_ORDER, Collection, Group, stack
from repro.report.tables import exit_accuracy, sections

# Colours by method, stable across figures; variants of one method share it and differ in line style.
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
LINE_STYLES = ("-", "--", ":", "-.")
CRITERION_MARKERS = {"entropy": "o", "maxprob": "s", "gate": "^"}
PANEL_SIZE = (5.6, 3.6)  # inches per panel
SINGLE_PANEL_WIDTH = 9.0  # inches
DPI = 110


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    std: np.ndarray | None = None  # spread over seeds (ddof = 1), same length as y
    method: str = ""  # picks the colour
    variant: int = 0  # picks the line style among one method's variants
    marker: str = "o"
    kind: str = ""  # training curves: "val_loss", "train_loss" or "val_accuracy"


@dataclass
class CostSeries(Series):
    """x, y: the Pareto front as a step function (mean over seeds of the best accuracy at cost <= x), std its spread."""

    points: tuple[np.ndarray, np.ndarray] | None = None  # every swept (relative cost, accuracy %) of every seed
    operating_point: tuple[float, float] | None = None  # (relative cost, accuracy %)


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)
    reference_lines: list[tuple[str, float, str]] = field(default_factory=list)  # (label, accuracy %, method)


def colour(method: str) -> str:
    index = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER) + sum(map(ord, method))
    return PALETTE[index % len(PALETTE)]


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


def _style(axis, title: str, xlabel: str, ylabel: str) -> None:
    axis.set_title(title, fontsize=11)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(True, alpha=0.3)
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)


def _legend(axis, outside: bool = False) -> None:
    """A legend inside the axes, or beside them (right) when there are many lines to keep clear of."""
    if not axis.get_legend_handles_labels()[0]:
        return
    if outside:
        axis.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axis.legend(fontsize=8, frameon=False, loc="best")


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
    figure, axes = _grid(len(panels))
    for axis, panel in zip(axes, panels):
        for series in panel.series:
            kwargs = dict(color=colour(series.method), linestyle=LINE_STYLES[series.variant % 4], marker=series.marker, label=series.label)
            if series.std is not None and np.isfinite(series.std).any():
                axis.errorbar(series.x, series.y, yerr=np.nan_to_num(series.std), capsize=3, **kwargs)
            else:
                axis.plot(series.x, series.y, **kwargs)
        for label, value, method in panel.reference_lines:
            axis.axhline(value, color=colour(method), linestyle="--", linewidth=1, label=label)
        widest = max((len(s.x) for s in panel.series), default=1)
        axis.set_xticks(range(1, widest + 1))
        _style(axis, panel.title, "exit (shallow → final)", "test accuracy (%)")
        _legend(axis)
    return figure


def accuracy_cost_figure(panels: list[Panel]) -> Figure:
    figure, axes = _grid(len(panels))
    for axis, panel in zip(axes, panels):
        for series in panel.series:
            tint = colour(series.method)
            if series.points is not None:
                axis.scatter(*series.points, s=7, color=tint, alpha=0.2, linewidths=0)
            axis.plot(series.x, series.y, drawstyle="steps-post", color=tint, linestyle=LINE_STYLES[series.variant % 4],
                      marker=series.marker, markersize=3, linewidth=1.8, label=series.label)
            if series.std is not None and np.isfinite(series.std).any():
                axis.fill_between(series.x, series.y - series.std, series.y + series.std, step="post", color=tint, alpha=0.12)
            if series.operating_point is not None:
                axis.plot(*series.operating_point, marker="*", markersize=13, color=tint, markeredgecolor="black", linestyle="none")
        axis.plot([], [], marker="*", markersize=10, color="white", markeredgecolor="black", linestyle="none", label="operating point")
        _style(axis, panel.title, "relative cost (mean MACs / plain network)", "test accuracy (%)")
        _legend(axis, outside=True)
    return figure


def training_figure(panels: list[Panel]) -> Figure:
    """Two axes per model x dataset: losses (solid: validation, dashed: training) and validation accuracy."""
    figure, axes = _grid(2 * len(panels), columns=2)
    for index, panel in enumerate(panels):
        loss_axis, accuracy_axis = axes[2 * index], axes[2 * index + 1]
        for series in panel.series:
            tint = colour(series.method)
            if series.kind == "val_loss":
                loss_axis.plot(series.x, series.y, color=tint, label=series.label, linestyle=LINE_STYLES[series.variant % 4])
            elif series.kind == "train_loss":
                loss_axis.plot(series.x, series.y, color=tint, alpha=0.6, linewidth=1, linestyle="--")
            else:
                accuracy_axis.plot(series.x, series.y, color=tint, label=series.label, marker=".", linestyle=LINE_STYLES[series.variant % 4])
                if series.std is not None and np.isfinite(series.std).any():
                    accuracy_axis.fill_between(series.x, series.y - series.std, series.y + series.std, color=tint, alpha=0.15)
        for axis in (loss_axis, accuracy_axis):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Methods sum different numbers of terms (bnet: one CE per exit), so losses differ in scale: log axis.
        loss_axis.set_yscale("log")
        loss_axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        loss_axis.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        _style(loss_axis, f"{panel.title}: loss (dashed: training)", "epoch", "loss (log scale)")
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
                     hatch=("", "//", "..", "xx")[series.variant % 4], edgecolor="white", label=series.label)
        widest = max((len(s.x) for s in panel.series), default=1)
        axis.set_xticks(range(1, widest + 1))
        axis.set_ylim(0, 100)
        _style(axis, panel.title, "exit (shallow → final)", "test images leaving here (%)")
        _legend(axis)
    return figure


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
            label = f"{group.label} (n={n})"
            if len(mean) == 1:
                # A network without early exits has one point: draw it as a level across the exits.
                panel.reference_lines.append((f"{label}, no early exits", float(mean[0]), group.method))
                continue
            panel.series.append(Series(label, np.arange(1, len(mean) + 1), mean, std, group.method, variants[id(group)]))
        if panel.series or panel.reference_lines:
            panels.append(panel)
    return panels


def _fronts(group: Group) -> dict[str, tuple[list, list]]:
    """Per criterion: each seed's test-split Pareto front and all its points, as (relative cost, accuracy %).

    Relative cost = 1 / MAC speed-up = mean MACs / plain-network MACs. Sweep thresholds come from each
    seed's own validation scores, so seeds are averaged along cost (`mean_front`), not threshold by threshold.
    """
    result: dict[str, tuple[list, list]] = {}
    for run in group.runs:
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
            for criterion, (fronts, points) in _fronts(group).items():
                fronts = [front for front in fronts if len(front[0])]
                if not fronts:
                    continue
                cost, mean, std = mean_front(fronts)
                everything = (np.concatenate([p[0] for p in points]), np.concatenate([p[1] for p in points]))
                own = _operating_criterion(group) == criterion
                panel.series.append(CostSeries(
                    f"{group.label}, {criterion} (n={len(fronts)})", cost, mean, std, method=group.method,
                    variant=variants[id(group)], marker=CRITERION_MARKERS.get(criterion, "o"),
                    points=everything, operating_point=point if own else None,
                ))
        if panel.series:
            panels.append(panel)
    return panels


def _operating_criterion(group: Group) -> str | None:
    for run in group.runs:
        criterion = ((run.eval or {}).get("operating_point") or {}).get("criterion")
        if criterion:
            return criterion
    return None


def training_panels(collection: Collection) -> list[Panel]:
    panels = []
    for caption, groups in sections(collection):
        panel, variants = Panel(caption), _variant_index(groups)
        for group in groups:
            frames = [run.metrics for run in group.runs if run.metrics is not None and "epoch" in run.metrics]
            if not frames:
                continue
            metrics = pd.concat(frames, ignore_index=True).groupby("epoch", sort=True)
            for column, kind, scale in (("val_loss", "val_loss", 1), ("train_loss", "train_loss", 1), ("val_acc_method", "val_accuracy", 100)):
                if column not in frames[0]:
                    continue
                mean, std = metrics[column].mean() * scale, metrics[column].std(ddof=1) * scale
                panel.series.append(Series(f"{group.label} (n={len(frames)})", mean.index.to_numpy(float), mean.to_numpy(),
                                           std.to_numpy(), group.method, variants[id(group)], kind=kind))
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
            panel.series.append(Series(group.label, np.arange(1, fractions.shape[1] + 1), fractions.mean(axis=0) * 100,
                                       None, group.method, variants[id(group)]))
        if panel.series:
            panels.append(panel)
    return panels


FIGURES = {
    # file name: (title, caption, panels from a collection, drawing)
    "exit-accuracy.png": ("Per-exit test accuracy", "Test accuracy of every exit (mean over seeds, bars: ± std); "
                          "networks without early exits as dashed levels. The reproduction report's Figure 3, for every exit.",
                          exit_accuracy_panels, exit_accuracy_figure),
    "accuracy-cost.png": ("Accuracy against cost", "Threshold sweeps on the test split: faint dots every swept threshold "
                          "of every seed, lines the Pareto front (mean over seeds of the best accuracy at that cost or less; "
                          "band ± std), star the operating point of Table 2.",
                          accuracy_cost_panels, accuracy_cost_figure),
    "exit-fractions.png": ("Where images leave", "Fraction of test images leaving at each exit at the operating point (mean over seeds).",
                           exit_fractions_panels, exit_fractions_figure),
    "training.png": ("Training curves", "Per epoch, mean over seeds (band: ± std of validation accuracy).",
                     training_panels, training_figure),
}
