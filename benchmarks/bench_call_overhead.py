"""What does early exit cost a network that has no exits? Issue 28's batch-1 goal: within 1% of plain.

A VGG-13 without exits (untrained: the path's cost does not depend on the weights) goes through three
calls at batch 1, interleaved call by call so that drifts in clock speed or load hit all alike:
- `raw`: the backbone's stages and the classifier called directly (no checks, no bookkeeping);
- `plain`: `repro.models.inference.run_plain`, the speed-up baseline of every timing;
- `early_exit`: `early_exit_single`, early exit's batch-1 path, which for such a network runs the same
  layers and returns the prediction, exit and MACs of each sample.
Reported per width: each call's median and mean in microseconds over --calls calls, their fixed overhead
above `raw`, and `repro.timing.measure`'s batch-1 ratio plain / early exit (what `repro eval --timing`
writes for a baseline run; goal >= 0.99) over --images random images.

    python benchmarks/bench_call_overhead.py --threads 2 [--widths 0.5 1.0] [--calls 2000] [--images 300]

Writes benchmarks/results/bench_call_overhead_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def per_call(calls: dict, x: torch.Tensor, count: int) -> dict:
    """Each call `count` times, in turn, after a warm-up: median and mean microseconds per call."""
    for call in calls.values():
        for _ in range(20):
            call(x)
    seconds = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            start = time.perf_counter()
            call(x)
            seconds[name].append(time.perf_counter() - start)
    return {name: {"median_us": statistics.median(v) * 1e6, "mean_us": statistics.fmean(v) * 1e6} for name, v in seconds.items()}


def main(args) -> dict:
    from repro.environment import describe_device
    from repro.models import create_model
    from repro.models.inference import early_exit_single, run_plain
    from repro.timing import measure

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    results = {"device": describe_device(device), "threads": args.threads, "torch": torch.__version__, "widths": {}}
    for width in args.widths:
        torch.manual_seed(0)
        model = create_model("vgg13", 10, exits=[], width=width).eval()

        @torch.inference_mode()
        def raw(x):
            h = x
            for stage in model.stages:
                h = stage(h)
            return model.classifier(h)

        calls = {
            "raw": raw,
            "plain": lambda x: run_plain(model, x),
            "early_exit": lambda x: early_exit_single(model, x, "entropy", []),
        }
        tight = per_call(calls, torch.randn(1, 3, 32, 32), args.calls)
        images = torch.randn(args.images, 3, 32, 32)
        timing = measure(model, images, torch.zeros(args.images, dtype=torch.long), "entropy", [],
                         model.costs.plain_macs, batch_size=256)
        row = {
            "per_call": tight,
            "overhead_us": {name: tight[name]["median_us"] - tight["raw"]["median_us"] for name in ("plain", "early_exit")},
            "measure_batch1_ms": {name: timing["batch1"][name]["mean_ms"] for name in ("plain", "early_exit")},
            "measure_batch1_ratio": timing["measured_speedup"]["batch1"],
            "measure_batch1_rounds": timing["measured_speedup"]["batch1_rounds"],
            "measure_batched_ratio": timing["measured_speedup"]["batched"],
        }
        results["widths"][str(width)] = row
        print(f"width {width}: per call (median us) raw {tight['raw']['median_us']:.0f}, plain {tight['plain']['median_us']:.0f}, "
              f"early exit {tight['early_exit']['median_us']:.0f}; repro.timing.measure batch 1 plain / early exit "
              f"{row['measure_batch1_ratio']:.3f} (rounds {', '.join(f'{r:.3f}' for r in row['measure_batch1_rounds'])}), "
              f"batch 256 {row['measure_batched_ratio']:.3f}")
    results["load_average_1min"] = os.getloadavg()[0]
    out = Path(args.out) if args.out else RESULTS / f"bench_call_overhead_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out} (load average {results['load_average_1min']:.2f})")
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--calls", type=int, default=2000, help="calls of each path in the tight loop")
    parser.add_argument("--images", type=int, default=300, help="random images for repro.timing.measure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
