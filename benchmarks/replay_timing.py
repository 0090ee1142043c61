"""Table 2 re-measured on today's inference path for committed cells whose checkpoints are gone.

A committed results folder keeps its small files (config.json, timing.json) but never checkpoint.pt, so its
timing cannot be re-run with `repro eval RUN --timing`. What its latency depends on is not the weights but
the architecture and which exit each image takes: a dense network's layers cost the same whatever their
values. So this script replays each cell's committed timing: the cell's network is built from config.json
(untrained, seeded), random images of the data set's shape go through it, and per-exit thresholds of the
cell's own criterion are set so that the images leave at the exits in the proportions the committed
timing.json measured (its `exit_fractions`, 1000 test images). Then `repro.timing.measure`, the function
`repro eval --timing` calls, times the plain, full and early-exit paths at batch 1 and in batches.

So that the thresholds can separate the images, each exit head's classifier (and gate) is scaled to spread
its scores (an untrained head's softmax is nearly uniform for every image); scaling a weight changes no
cost. Which images leave where is then unrelated to their content, which at batch 256 is what a random test
sample gives too. `--check RUN` replays a run that still has its checkpoint beside its real timing, to show
how closely a replay tracks a measurement.

    python benchmarks/replay_timing.py --threads 2 [--images 300] [--only 'bnet-*'] [results/cpu ...]
    python benchmarks/replay_timing.py --threads 2 --check runs/retrained-cpu/bnet-cifar10-jpeg

Writes benchmarks/results/replay_timing_<device>.json and .md (or --out, without its extension).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCORE_SPREAD = 4.0  # target standard deviation of a head's logits over the replayed images


def exit_counts(fractions: list[float], n: int) -> list[int]:
    """Images per exit out of n for these fractions (largest remainders, so they sum to n)."""
    raw = [f * n for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


def spread_scores(model, x: torch.Tensor) -> None:
    """Scale every exit head's classifier and gate so their outputs over x have SCORE_SPREAD's deviation."""
    from repro.models.inference import run_every_exit

    out = run_every_exit(model, x)
    with torch.no_grad():
        for branch, logits, gate in zip(model.branches, out.logits, out.gates):
            branch.classify.weight.mul_(SCORE_SPREAD / max(logits.float().std().item(), 1e-12))
            # Centred too: a gate saturated at 1.0 in float32 would fire at any threshold.
            logit = torch.logit(gate.double().clamp(1e-12, 1 - 1e-12))
            scale = SCORE_SPREAD / max(logit.std().item(), 1e-12)
            branch.gate.weight.mul_(scale)
            branch.gate.bias.sub_(logit.mean().item()).mul_(scale)


def fit_thresholds(criterion: str, scores: torch.Tensor, counts: list[int]) -> list[float]:
    """Per early exit, the threshold halfway between the scores of the last image that should leave there and
    the first that should stay, among the images still in: scores [E-1, N] float64, counts [E]."""
    from repro.criteria import fires

    remaining = torch.ones(scores.shape[1], dtype=torch.bool)
    thresholds = []
    for b, wanted in enumerate(counts[:-1]):
        values = scores[b][remaining].sort().values  # ascending
        if criterion != "entropy":  # maxprob and gate fire at or above: the largest leave
            values = values.flip(0)
        if len(values) == 0:  # every image has left: any threshold (the same kernels run for no image)
            threshold = 0.0 if criterion == "entropy" else 1.0
        elif wanted == 0:
            threshold = values[0].item() / 2 if criterion == "entropy" else (1.0 + values[0].item()) / 2
        elif wanted >= len(values):
            threshold = 1.0 if criterion == "entropy" else 0.0
        else:
            threshold = (values[wanted - 1].item() + values[wanted].item()) / 2
        thresholds.append(min(1.0, max(0.0, threshold)))
        remaining &= ~fires(criterion, scores[b], thresholds[-1])
    return thresholds


def replay(run: Path, n_images: int, batch_size: int) -> dict:
    """Time `run`'s network (untrained) with its committed timing.json's criterion and exit fractions."""
    from repro import artifacts, rundir
    from repro.criteria import scores
    from repro.models.inference import run_every_exit
    from repro.rebuild import build_model
    from repro.timing import measure

    folder = rundir.open_run(run)
    config = artifacts.read_config(folder)
    committed = json.loads((run / "timing.json").read_text())
    torch.manual_seed(0)
    model = build_model(config).eval()
    x = torch.randn(n_images, config.in_channels, config.image_size, config.image_size)
    criterion = committed["operating_point"]["criterion"]
    counts = exit_counts(committed["exit_fractions"], n_images)
    if criterion is None:  # a network without exits: every path ends at the final classifier
        criterion, thresholds = "entropy", []
    else:
        spread_scores(model, x)
        out = run_every_exit(model, x)
        gates = torch.stack(out.gates) if criterion == "gate" else None
        thresholds = fit_thresholds(criterion, scores(criterion, torch.stack(out.logits), gates), counts)
    body = measure(model, x, torch.zeros(n_images, dtype=torch.long), criterion, thresholds, model.costs.plain_macs, batch_size)
    return {
        "cell": run.name,
        "criterion": committed["operating_point"]["criterion"],
        "committed": _figures(committed),
        "replay": {**_figures(body), "exit_fractions": body["exit_fractions"], "wanted_counts": counts},
    }


def _figures(timing: dict) -> dict:
    measured = timing["measured_speedup"]
    return {
        "device": timing.get("device"),
        "n_images": timing["n_images"],
        "macs_speedup": timing["macs_speedup"],
        "batch1": measured["batch1"],
        "batched": measured["batched"],
        "batch1_over_macs": measured["batch1"] / timing["macs_speedup"],
        "batched_over_macs": measured["batched"] / timing["macs_speedup"],
        "batch1_plain_ms": timing["batch1"]["plain"]["mean_ms"],
        "batch1_early_exit_ms": timing["batch1"]["early_exit"]["mean_ms"],
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# Table 2's timings replayed on today's inference path ({meta['device']}, torch {meta['torch']})",
        "",
        f"Each committed cell's network, untrained, with its committed exit fractions and criterion, over {meta['images']} "
        f"random images, batch 1 and batch {meta['batch_size']} (benchmarks/replay_timing.py says how and why). Measured "
        "speed-up = plain / early-exit latency; \"/ MACs\" divides it by the MAC-predicted speed-up. \"committed\" is "
        "the cell's timing.json, taken on its trained network with the inference path of its day, on the machine named.",
        "",
        "| cell | criterion | MAC speed-up | batch 1 committed | batch 1 replay | batch 256 committed | batch 256 replay | committed on |",
        "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | :--- |",
    ]
    for row in rows:
        c, r = row["committed"], row["replay"]
        lines.append(
            f"| {row['cell']} | {row['criterion'] or 'none'} | {r['macs_speedup']:.2f}x | {c['batch1']:.2f}x ({c['batch1_over_macs']:.2f}) | "
            f"{r['batch1']:.2f}x ({r['batch1_over_macs']:.2f}) | {c['batched']:.2f}x ({c['batched_over_macs']:.2f}) | "
            f"{r['batched']:.2f}x ({r['batched_over_macs']:.2f}) | {c['device']} |"
        )
    lines += ["", f"Load average over the last minute when it finished: {meta['load_average_1min']:.2f}.", ""]
    return "\n".join(lines)


def main(args) -> list[dict]:
    from repro.environment import describe_device

    torch.set_num_threads(args.threads)
    runs = [Path(a) for a in args.check] if args.check else sorted(
        folder for source in args.sources for folder in Path(source).iterdir()
        if (folder / "timing.json").is_file() and (folder / "config.json").is_file()
        and fnmatch.fnmatch(folder.name, args.only))
    if not runs:
        raise SystemExit("no cell with timing.json and config.json matched")
    rows = []
    for run in runs:
        row = replay(run, args.images, args.batch_size)
        r, c = row["replay"], row["committed"]
        print(f"{row['cell']}: MACs {r['macs_speedup']:.2f}x (committed {c['macs_speedup']:.2f}x); batch 1 {r['batch1']:.2f}x "
              f"(committed {c['batch1']:.2f}x), batch {args.batch_size} {r['batched']:.2f}x / MACs {r['batched_over_macs']:.2f} "
              f"(committed {c['batched']:.2f}x / {c['batched_over_macs']:.2f})", flush=True)
        rows.append(row)
    meta = {"device": describe_device(torch.device("cpu")), "threads": args.threads, "torch": torch.__version__,
            "images": args.images, "batch_size": args.batch_size, "load_average_1min": os.getloadavg()[0]}
    name = "replay_timing_check" if args.check else "replay_timing"
    out = Path(args.out) if args.out else RESULTS / f"{name}_cpu"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "cells": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(f"wrote {out.with_suffix('.json')} and .md")
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", default=["results/cpu"], help="results folders whose cells to replay")
    parser.add_argument("--only", default="*", help="glob on the cell names")
    parser.add_argument("--check", nargs="+", default=None, help="runs with checkpoints: replay them beside their own timing.json")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
