"""Training throughput on this CPU: VGG-13 without exits (baseline) vs VGG-13 with 9 exits (bnet, proposed).

Runs the real training step (repro.trainer.train_one_epoch: forward, method loss, backward, Adam step)
at full width and batch 128 on random 3x32x32 images (throughput does not depend on pixel values), with
the report recipe's model (no batch norm, 512-4096-4096-C classifier with dropout). For each
configuration: `--warmup` untimed steps, then `--rounds` rounds in which the three configurations take
turns at `--steps` timed steps each (so a change in the machine's load hits all three). The slowdown
is given from the best round of each (the least disturbed by other processes, as timeit takes the
minimum) and from the medians. The exits' overhead is the baseline's images/s divided by the multi-exit model's (1.0 =
free), beside the forward MAC ratio (the multi-exit network, all heads included, over the plain one).

    python benchmarks/bench_train.py            # writes benchmarks/results/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from repro.config import TrainConfig
from repro.methods import get_method
from repro.models import create_model
from repro.trainer import make_optimizer, train_one_epoch
from repro.environment import describe_machine

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train.json"


class Setup:
    """One configuration: model, method, optimizer and two fixed random batches, built once."""

    def __init__(self, method_name: str, exits, batch_size: int):
        torch.manual_seed(0)
        self.method_name = method_name
        self.model = create_model("vgg13", 10, 3, 32, exits=exits)
        self.method = get_method(method_name)
        self.costs = self.model.costs.relative()
        self.optimizer = make_optimizer(TrainConfig(method=method_name), self.model, torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        self.batches = [
            (torch.randn(batch_size, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator))
            for _ in range(2)
        ]

    def steps(self, count: int) -> float:
        """Images per second over `count` training steps."""
        start = time.perf_counter()
        stats = train_one_epoch(self.model, self.method, [self.batches[i % 2] for i in range(count)], self.optimizer, self.costs)
        return stats["images"] / (time.perf_counter() - start)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds; configurations alternate within each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration first")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    setups = [Setup("baseline", [], args.batch_size), Setup("bnet", None, args.batch_size), Setup("proposed", None, args.batch_size)]
    for setup in setups:
        setup.steps(args.warmup)
    # Alternate the configurations round by round so that a change in the machine's load hits all of them.
    rates = {setup.method_name: [] for setup in setups}
    for _ in range(args.rounds):
        for setup in setups:
            rates[setup.method_name].append(setup.steps(args.steps))
    plain_macs = setups[0].model.costs.plain_macs
    baseline = max(rates["baseline"])
    baseline_median = statistics.median(rates["baseline"])
    runs = []
    for setup in setups:
        best = max(rates[setup.method_name])
        median = statistics.median(rates[setup.method_name])
        runs.append({
            "method": setup.method_name,
            "num_exits": setup.model.num_exits,
            "images_per_second_per_round": rates[setup.method_name],
            "images_per_second_best": best,
            "images_per_second_median": median,
            "slowdown_vs_baseline": baseline / best,
            "slowdown_vs_baseline_by_median": baseline_median / median,
            "macs_per_image_forward": setup.model.costs.cumulative_macs[-1],
            "mac_ratio_vs_baseline": setup.model.costs.cumulative_macs[-1] / plain_macs,
        })
    result = {
        "machine": describe_machine(),
        "torch": torch.__version__,
        "model": "vgg13, width 1.0, no batch norm, report classifier (512-4096-4096-10), 3x32x32",
        "optimizer": "adam (report recipe)",
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        # Other processes compete for the same cores; the 1-minute load average says how much.
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        print(f"{run['method']:>9} ({run['num_exits']:>2} exits): best {run['images_per_second_best']:6.1f} img/s, "
              f"median {run['images_per_second_median']:6.1f} (rounds: {', '.join(f'{r:.0f}' for r in run['images_per_second_per_round'])}), "
              f"slowdown x{run['slowdown_vs_baseline']:.2f} (by median x{run['slowdown_vs_baseline_by_median']:.2f}), MAC ratio x{run['mac_ratio_vs_baseline']:.2f}")
    print(f"load average {result['load_average_1min_before_after']}; wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
