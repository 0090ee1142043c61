"""Does early exiting save wall-clock time in proportion to the MACs it saves? (not a test)

For each model at full width (3x32x32 inputs, 10 classes, random weights; timings do not depend on the
weights), on this machine's CPU (or its GPU with --device cuda: every call timed with CUDA synchronisation,
TF32 off so that float32 means float32 and the exactness check holds):

1. Batch size 1: every sample forced out at exit b (entropy thresholds 1 at b, 0 before it) through
   `early_exit_single`, versus `run_plain` (the network without exits). Measured speed-up =
   plain latency / exit-b latency; MAC-predicted speed-up = plain_macs / cumulative_macs[b]; their ratio
   is the goal figure. Calls are interleaved round-robin (one call of each
   configuration per round) so that drift in the machine's speed hits all of them alike; the median and
   the best call of each are reported (other processes sharing the CPU only ever add time).
   Goal: ratio >= 0.9 at every exit but the first (where MACs predict ~100x with pool heads and the fixed
   cost of a call dominates; its figure is reported).
2. Batch size 256, mixed exits: Gaussian-noise images; per-exit entropy thresholds chosen so that an equal
   share of the samples leaves at every exit (1/E each: at exit b, 1/(E-b) of those still in), which
   exercises the shrinking batch at every segment. Throughput of `early_exit_batched` versus `run_plain`
   and the full forward (every exit), with the MAC-predicted speed-up plain_macs / mean MACs.
   Goal: ratio (measured / MAC-predicted) >= 0.85 for the three models with their default (conv) heads.
3. Memory layout: the plain network's ms per image at batch sizes 1-256 in the default (NCHW) and the
   channels-last layout, the measurement behind repro.models.inference.CHANNELS_LAST_MIN_BATCH.

Both the report's conv exit head and the cheaper pooled head are measured. Writes
benchmarks/results/bench_exits.json and bench_exits.md. Usage: python benchmarks/bench_exits.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from repro import criteria
from repro.models import create_model, list_models
from repro.models.inference import early_exit_batched, early_exit_single, run_all_then_select, run_every_exit, run_plain
from repro.environment import describe_machine, select_device
from repro.errors import ReproError
from repro.timing import wall_clock as clock

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved_times(calls: dict, rounds: int, warmup: int, now=time.perf_counter) -> dict[str, dict[str, float]]:
    """Median and best (minimum) seconds per call of each zero-argument function, one call each per round.

    The minimum is reported beside the median because other processes may share the CPU: their load only
    ever adds time, so the best call is the closest to the machine's own speed. `now`: the clock (on a GPU
    one that synchronises first, repro.timing's, so that a call's time includes its queued work)."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            start = now()
            fn()
            times[name].append(now() - start)
    return {name: {"median": statistics.median(values), "best": min(values)} for name, values in times.items()}


def forcing_thresholds(num_exits: int, exit_index: int) -> list[float]:
    return [1.0 if b == exit_index else 0.0 for b in range(num_exits - 1)]


def batch1(model, rounds: int, warmup: int, device: torch.device, passes: int) -> dict:
    """`passes` independent interleaved measurements: each gives a ratio per exit, and the reported ratio
    is their median with their range beside it. On this shared VM a whole pass can run in a slow phase in
    which small calls (many short parallel regions) slow down more than the plain network's large ones."""
    x = torch.randn(1, *model.input_shape, device=device)
    costs = model.costs
    calls = {"plain": lambda: run_plain(model, x)}
    for b in range(model.num_exits):
        thresholds = forcing_thresholds(model.num_exits, b)
        taken = early_exit_single(model, x, "entropy", thresholds).exits.item()
        assert taken == b, f"forcing exit {b} took exit {taken}"
        calls[f"exit{b}"] = lambda thresholds=thresholds: early_exit_single(model, x, "entropy", thresholds)
    runs = [interleaved_times(calls, rounds, warmup, clock(device)) for _ in range(passes)]
    plain_median = statistics.median(run["plain"]["median"] for run in runs)
    plain_best = min(run["plain"]["best"] for run in runs)
    exits = []
    for b in range(model.num_exits):
        name = f"exit{b}"
        predicted = costs.plain_macs / costs.cumulative_macs[b]
        ratios = [run["plain"]["median"] / run[name]["median"] / predicted for run in runs]
        median = statistics.median(run[name]["median"] for run in runs)
        best = min(run[name]["best"] for run in runs)
        exits.append({
            "exit": b,
            "median_ms": 1e3 * median,
            "best_ms": 1e3 * best,
            "cumulative_macs": costs.cumulative_macs[b],
            "measured_speedup": statistics.median(ratios) * predicted,
            "measured_speedup_best": plain_best / best,
            "macs_speedup": predicted,
            "ratio": statistics.median(ratios),
            "ratio_passes": ratios,
            "ratio_best": plain_best / best / predicted,
        })
    after_first = exits[1:]  # the goal's exits: every exit but the first, the final one included
    return {
        "plain_median_ms": 1e3 * plain_median,
        "plain_best_ms": 1e3 * plain_best,
        "exits": exits,
        "min_ratio_after_first": min(e["ratio"] for e in after_first),
        "min_ratio_best_after_first": min(e["ratio_best"] for e in after_first),
    }


def spread_thresholds(model, x: torch.Tensor) -> list[float]:
    """Entropy thresholds giving every exit an equal share of x: at exit b, the lowest-entropy 1/(E-b) of
    the samples still in leave (threshold midway between the last leaver and the next score)."""
    out = model(x)
    score = criteria.scores("entropy", torch.stack(out.logits)).double()
    still_in = torch.ones(len(x), dtype=torch.bool, device=x.device)
    thresholds = []
    for b in range(model.num_exits - 1):
        remaining = score[b][still_in].sort().values
        leaving = round(len(remaining) / (model.num_exits - b))
        if leaving == 0:
            threshold = 0.0
        elif leaving == len(remaining):
            threshold = 1.0
        else:
            threshold = ((remaining[leaving - 1] + remaining[leaving]) / 2).item()
        thresholds.append(threshold)
        still_in &= ~criteria.fires("entropy", score[b], threshold)
    return thresholds


def batched(model, batch_size: int, rounds: int, warmup: int, device: torch.device) -> dict:
    x = torch.randn(batch_size, *model.input_shape, device=device)
    model.eval()
    with torch.inference_mode():
        thresholds = spread_thresholds(model, x)
    result = run_all_then_select(model, x, "entropy", thresholds)
    check = early_exit_batched(model, x, "entropy", thresholds)
    assert torch.equal(check.exits, result.exits), "batched early exit disagrees with the reference"
    fractions = torch.bincount(result.exits, minlength=model.num_exits).double() / batch_size
    mean_macs = result.macs.mean().item()

    times = interleaved_times(
        {
            "plain": lambda: run_plain(model, x),
            "full": lambda: run_every_exit(model, x),
            "early_exit": lambda: early_exit_batched(model, x, "entropy", thresholds),
        },
        rounds,
        warmup,
        clock(device),
    )
    per_image = {name: 1e3 * t["median"] / batch_size for name, t in times.items()}
    per_image_best = {name: 1e3 * t["best"] / batch_size for name, t in times.items()}
    return {
        "batch_size": batch_size,
        "thresholds": thresholds,
        "exit_fractions": fractions.tolist(),
        "ms_per_image": per_image,
        "ms_per_image_best": per_image_best,
        "images_per_second": {name: 1e3 / ms for name, ms in per_image.items()},
        "mean_macs": mean_macs,
        "macs_speedup": model.costs.plain_macs / mean_macs,
        "measured_speedup": per_image["plain"] / per_image["early_exit"],
        "measured_speedup_vs_full": per_image["full"] / per_image["early_exit"],
        "measured_speedup_best": per_image_best["plain"] / per_image_best["early_exit"],
        "ratio": per_image["plain"] / per_image["early_exit"] / (model.costs.plain_macs / mean_macs),
    }


LAYOUT_BATCH_SIZES = (1, 4, 16, 32, 64, 128, 256)


def layouts(model, rounds: int, device: torch.device) -> dict:
    """Plain-network ms per image at each batch size, default layout vs channels-last (interleaved)."""
    rows = []
    for n in LAYOUT_BATCH_SIZES:
        x = torch.randn(n, *model.input_shape, device=device)
        cl = x.contiguous(memory_format=torch.channels_last)
        calls = {"default": lambda: model.backbone(x), "channels_last": lambda: model.backbone(cl)}
        with torch.inference_mode():
            times = interleaved_times(calls, max(3, rounds * 4 // n), 1, clock(device))
        rows.append({"batch_size": n, **{name: 1e3 * t["median"] / n for name, t in times.items()}})
    return {"ms_per_image": rows}


def to_markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Early-exit speed-up: measured wall clock vs. MAC prediction",
        "",
        f"Machine: {machine['device']}, torch {machine['torch']}, Python {machine['python']}. "
        f"Written by `benchmarks/bench_exits.py` ({report['seconds']:.0f} s). Load average (1 min) "
        f"{machine['load_before']:.1f} before and {machine['load_after']:.1f} after (a 1-minute average lags: it "
        "counts the minute before the start too); each figure is given for the median call and for the best "
        "(least disturbed) call, since other processes only ever add time.",
        "Models at full width, 3x32x32 inputs, 10 classes, random weights, float32, eval mode.",
        "",
        f"## Batch size 1: every sample forced out at exit b ({report['settings']['passes_batch1']} passes of "
        f"{report['settings']['rounds_batch1']} interleaved calls each)",
        "",
        "Measured = plain-network latency / exit-b latency; predicted = plain MACs / cumulative MACs of exit b; "
        "ratio = measured / predicted, the median over passes of (median plain latency / median exit-b latency) / "
        "predicted, with its range over passes (goal >= 0.9 at every exit but the first); best = from the fastest "
        "call of each over all passes.",
        "",
    ]
    for run in report["runs"]:
        one = run["batch1"]
        lines += [
            f"### {run['model']}, head {run['head']}: plain network {one['plain_median_ms']:.2f} ms median, "
            f"{one['plain_best_ms']:.2f} ms best; lowest ratio after the first exit "
            f"{one['min_ratio_after_first']:.2f} (median), {one['min_ratio_best_after_first']:.2f} (best)",
            "",
            "| exit | MMACs | median ms | best ms | MAC speed-up | measured (median) | ratio | ratio range | measured (best) | ratio |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for e in one["exits"]:
            lines.append(
                f"| {e['exit']} | {e['cumulative_macs'] / 1e6:.1f} | {e['median_ms']:.2f} | {e['best_ms']:.2f} | "
                f"{e['macs_speedup']:.2f} | {e['measured_speedup']:.2f} | {e['ratio']:.2f} | "
                f"{min(e['ratio_passes']):.2f}-{max(e['ratio_passes']):.2f} | "
                f"{e['measured_speedup_best']:.2f} | {e['ratio_best']:.2f} |"
            )
        lines.append("")
    lines += [
        f"## Batch size {report['settings']['batch_size']}, an equal share of samples at every exit "
        f"(median of {report['settings']['rounds_batched']} interleaved calls)",
        "",
        "Full = every exit evaluated (the reference's forward). ms per image from the median call; "
        "the last column uses the best calls. Ratio = measured vs plain / MAC speed-up (goal >= 0.85 with the "
        "default conv heads).",
        "",
        "| model | head | exit fractions | plain ms/img | full ms/img | early-exit ms/img | MAC speed-up | "
        "measured vs plain | ratio | measured vs full | measured vs plain (best) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in report["runs"]:
        b = run["batched"]
        ms = b["ms_per_image"]
        lines.append(
            f"| {run['model']} | {run['head']} | {' '.join(f'{f:.2f}' for f in b['exit_fractions'])} | "
            f"{ms['plain']:.3f} | {ms['full']:.3f} | {ms['early_exit']:.3f} | {b['macs_speedup']:.2f} | "
            f"{b['measured_speedup']:.2f} | {b['ratio']:.2f} | {b['measured_speedup_vs_full']:.2f} | "
            f"{b['measured_speedup_best']:.2f} |"
        )
    lines.append("")
    lines += [
        "## Memory layout: the plain network's ms per image, default (NCHW) / channels-last",
        "",
        "| model | " + " | ".join(f"batch {n}" for n in LAYOUT_BATCH_SIZES) + " |",
        "| --- |" + " ---: |" * len(LAYOUT_BATCH_SIZES),
    ]
    for run in report["runs"]:
        if "layouts" in run:
            cells = [f"{row['default']:.2f} / {row['channels_last']:.2f}" for row in run["layouts"]["ms_per_image"]]
            lines.append(f"| {run['model']} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, to check the script runs")
    parser.add_argument("--models", nargs="*", default=list_models())
    parser.add_argument("--heads", nargs="*", default=["conv", "pool"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per configuration at batch size 1")
    parser.add_argument("--passes", type=int, default=3, help="independent batch-1 measurements (median and range reported)")
    parser.add_argument("--batch-rounds", type=int, default=7, help="timed calls per configuration at batch 256")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timed with CUDA synchronisation around every call)")
    args = parser.parse_args()
    rounds, batch_rounds, passes = (3, 1, 1) if args.quick else (args.rounds, args.batch_rounds, args.passes)
    torch.set_num_threads(args.threads)
    try:
        device = select_device(args.device)
    except ReproError as error:
        raise SystemExit(str(error)) from None
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    started = time.perf_counter()
    runs = []
    for name in args.models:
        for head in args.heads:
            model = create_model(name, 10, 3, 32, head=head).eval().to(device)
            runs.append({
                "model": name,
                "head": head,
                "plain_macs": model.costs.plain_macs,
                "cumulative_macs": model.costs.cumulative_macs,
                "batch1": batch1(model, rounds, warmup=max(2, rounds // 10), device=device, passes=passes),
                "batched": batched(model, args.batch_size, batch_rounds, warmup=1, device=device),
                **({"layouts": layouts(model, rounds, device)} if head == "conv" else {}),
            })
            print(f"{name} head={head}: done at {time.perf_counter() - started:.0f} s", flush=True)
    report = {
        "machine": {**describe_machine(device), "load_before": load_before, "load_after": os.getloadavg()[0]},
        "settings": {"rounds_batch1": rounds, "passes_batch1": passes, "rounds_batched": batch_rounds, "batch_size": args.batch_size,
                     "criterion": "entropy", "input": "3x32x32 Gaussian noise", "num_classes": 10},
        "seconds": time.perf_counter() - started,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("_quick" if args.quick else "") + ("" if device.type == "cpu" else f"_{device.type}")
    (args.out / f"bench_exits{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"bench_exits{suffix}.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
