"""How fast is a threshold sweep? Goal (issue 5): 1000 thresholds x 10,000 samples x 10 exits in < 1 s on this CPU.

Times `repro.sweep.operating_points` (scores, exit decisions, accuracy, mean MACs and exit fractions for
every threshold) on synthetic stored outputs, for every criterion, for shared thresholds (the default
sweep: sort-based path) and for per-exit threshold vectors (mask path), plus the Pareto flags. Each figure
is the median of several repeats, as wall-clock and process CPU time; the machine may be shared, so the
load average is recorded beside them. Writes benchmarks/results/bench_sweep.json and .png.

    python benchmarks/bench_sweep.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from repro import criteria, sweep
from repro.sweep import SplitOutputs

RESULTS = Path(__file__).resolve().parent / "results"
NUM_EXITS, NUM_SAMPLES, NUM_CLASSES = 10, 10_000, 10
THRESHOLD_COUNTS = (10, 100, 1000, 10_000)
GOAL_SECONDS = 1.0  # at 1000 thresholds


def synthetic_outputs(seed: int = 0) -> SplitOutputs:
    """Logits that grow more confident and more often right with depth, and uniform gates."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,), generator=generator)
    logits = torch.randn(NUM_EXITS, NUM_SAMPLES, NUM_CLASSES, generator=generator)
    depth = torch.arange(NUM_EXITS, dtype=torch.float32)[:, None]
    logits[:, torch.arange(NUM_SAMPLES), targets] += 0.5 * depth
    gates = torch.rand(NUM_EXITS - 1, NUM_SAMPLES, generator=generator)
    return SplitOutputs(logits * (1 + 0.3 * depth[..., None]), gates, targets)


def timed(function, repeats: int) -> dict:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def main(repeats: int) -> dict:
    split = synthetic_outputs()
    exit_macs = torch.linspace(1e7, 1e8, NUM_EXITS, dtype=torch.float64)
    plain_macs = 9e7
    generator = torch.Generator().manual_seed(1)
    results = {"shared": {}, "per_exit": {}, "pareto": {}}
    for criterion in criteria.CRITERIA:
        for kind in ("shared", "per_exit"):
            rows = {}
            for count in THRESHOLD_COUNTS:
                if kind == "per_exit" and count > 1000:
                    continue  # the mask path is linear in T; 10,000 per-exit vectors is not a use case
                if kind == "shared":
                    thresholds = torch.linspace(0, 1, count, dtype=torch.float64)
                else:
                    thresholds = torch.rand(count, NUM_EXITS - 1, generator=generator, dtype=torch.float64)
                operating_points = lambda: sweep.operating_points(criterion, thresholds, split, exit_macs, plain_macs)  # noqa: E731
                operating_points()  # warm-up
                rows[count] = timed(operating_points, repeats)
            results[kind][criterion] = rows
        points = sweep.operating_points(criterion, sweep.threshold_grid(criterion, split, 1000), split, exit_macs, plain_macs)
        results["pareto"][criterion] = timed(lambda: sweep.pareto_front(points.accuracy, points.mean_macs), repeats)

    worst = max(results["shared"][c][1000]["wall_s"] for c in criteria.CRITERIA)
    summary = {
        "benchmark": "sweep: operating_points over thresholds x samples x exits",
        "samples": NUM_SAMPLES,
        "exits": NUM_EXITS,
        "classes": NUM_CLASSES,
        "repeats": repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_1min": os.getloadavg()[0],
        "goal": f"1000 shared thresholds in < {GOAL_SECONDS} s",
        "worst_criterion_wall_s_at_1000": worst,
        "goal_met": worst < GOAL_SECONDS,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, RESULTS / "bench_sweep.png")
    return summary


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for kind, style in (("shared", "-o"), ("per_exit", "--s")):
        for criterion, rows in results[kind].items():
            counts = sorted(rows)
            axis.plot(counts, [rows[c]["wall_s"] for c in counts], style, label=f"{criterion}, {kind.replace('_', '-')} thresholds")
    axis.axhline(GOAL_SECONDS, color="grey", linestyle=":", label="goal at 1000 thresholds")
    axis.set(xscale="log", yscale="log", xlabel="thresholds", ylabel="seconds (median wall-clock)")
    axis.set_title(f"Sweep over {NUM_SAMPLES:,} samples x {NUM_EXITS} exits")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    summary = main(parser.parse_args().repeats)
    for kind in ("shared", "per_exit"):
        for criterion, rows in summary["results"][kind].items():
            cells = ", ".join(f"T={count}: {row['wall_s'] * 1000:.1f} ms" for count, row in rows.items())
            print(f"{kind:9s} {criterion:8s} {cells}")
    print(f"worst at 1000 shared thresholds: {summary['worst_criterion_wall_s_at_1000']:.3f} s (goal < {GOAL_SECONDS} s), load {summary['load_average_1min']:.1f}")
