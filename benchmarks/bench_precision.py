"""fp32 against bf16 training on this CPU: throughput of the three models with exits, and accuracy agreement.

1. Throughput: the real training step (repro.trainer.train_one_epoch: forward, bnet loss over every exit,
   backward, Adam) for vgg13, alexnet and resnet18 with their default exits at `--width`, batch 128, in
   fp32 and in bf16 (autocast + channels-last, what `--precision bf16` does); the two precisions take
   turns round by round, and the best round of each is kept (the least disturbed by other processes).
2. Accuracy: `repro train` of VGG-13 (bnet, the report recipe) on the CIFAR-10 JPEG copy for `--epochs`
   epochs on `--subset` images in both precisions over `--seeds` seeds; the final-exit validation accuracy
   of each, and whether the precisions agree: the difference of the means within 1 point, or within the
   larger of the two seed spreads (sample standard deviations).

    python benchmarks/bench_precision.py                 # writes benchmarks/results/bench_precision.json
    python benchmarks/bench_precision.py --skip-accuracy  # throughput only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from repro.environment import describe_machine
from repro.methods import get_method
from repro.models import create_model
from repro.trainer import Accelerator, make_optimizer, native_bf16, train_one_epoch
from repro.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_precision.json"
DATA = ROOT.parent / "shared" / "data"


class Setup:
    """One model in one precision: model, method, optimizer and two fixed random batches, built once."""

    def __init__(self, model_name: str, precision: str, width: float, batch_size: int):
        torch.manual_seed(0)
        self.accelerator = Accelerator.for_device(torch.device("cpu"), precision)
        self.model = create_model(model_name, 10, 3, 32, width=width)
        if self.accelerator.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = get_method("bnet")
        self.costs = self.model.costs.relative()
        self.optimizer = make_optimizer(TrainConfig(method="bnet"), self.model, torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(batch_size, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator))
                        for _ in range(2)]

    def rate(self, steps: int) -> float:
        start = time.perf_counter()
        stats = train_one_epoch(self.model, self.method, [self.batches[i % 2] for i in range(steps)], self.optimizer, self.costs,
                                accelerator=self.accelerator)
        return stats["images"] / (time.perf_counter() - start)


def throughput(models: list[str], width: float, batch_size: int, steps: int, rounds: int) -> list[dict]:
    results = []
    for name in models:
        setups = {precision: Setup(name, precision, width, batch_size) for precision in ("fp32", "bf16")}
        for setup in setups.values():
            setup.rate(2)  # warm-up: oneDNN picks and compiles its kernels
        rates = {precision: [] for precision in setups}
        for _ in range(rounds):
            for precision, setup in setups.items():
                rates[precision].append(setup.rate(steps))
        best = {precision: max(values) for precision, values in rates.items()}
        results.append({
            "model": name, "exits": setups["fp32"].model.num_exits - 1, "width": width,
            "images_per_second_best": best, "images_per_second_median": {p: statistics.median(v) for p, v in rates.items()},
            "bf16_speedup": best["bf16"] / best["fp32"],
        })
        print(f"{name:>9} width {width:g}: fp32 {best['fp32']:6.1f}, bf16 {best['bf16']:6.1f} img/s (best of {rounds}): "
              f"x{best['bf16'] / best['fp32']:.2f}", flush=True)
    return results


def accuracy(seeds: list[int], epochs: int, subset: int, width: float) -> dict:
    from repro.trainer import fit

    finals = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as folder:
        for precision in finals:
            for seed in seeds:
                config = TrainConfig.from_recipe("report", model="vgg13", method="bnet", dataset="cifar10-jpeg", data_dir=str(DATA),
                                                 subset=subset, epochs=epochs, width=width, seed=seed, precision=precision, patience=0)
                start = time.perf_counter()
                result = fit(config, Path(folder) / f"{precision}-{seed}", device="cpu")
                last = result.rows[-1]
                exits = sorted(k for k in last if k.startswith("val_acc_exit"))
                finals[precision].append(last[exits[-1]])
                print(f"{precision} seed {seed}: final exit {100 * last[exits[-1]]:.2f}% validation after {epochs} epochs "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    means = {p: statistics.fmean(v) * 100 for p, v in finals.items()}
    spreads = {p: (statistics.stdev(v) * 100 if len(v) > 1 else 0.0) for p, v in finals.items()}
    difference = abs(means["bf16"] - means["fp32"])
    allowed = max(1.0, *spreads.values())
    verdict = (f"agree: |{means['bf16']:.2f} - {means['fp32']:.2f}| = {difference:.2f} points <= {allowed:.2f} "
               f"(the larger of 1 point and the seed spreads)" if difference <= allowed else
               f"DISAGREE: the means differ by {difference:.2f} points, more than {allowed:.2f}")
    print(verdict, flush=True)
    return {"model": f"vgg13 width {width:g}, bnet, report recipe", "data": f"CIFAR-10 (JPEG copy), subset {subset}",
            "epochs": epochs, "seeds": seeds, "final_exit_val_accuracy": finals, "mean_percent": means,
            "std_percent": spreads, "difference_points": difference, "allowed_points": allowed,
            "agree": difference <= allowed, "verdict": verdict}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg13,alexnet,resnet18")
    parser.add_argument("--width", type=float, default=0.5, help="channel multiplier of the throughput models")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--accuracy-width", type=float, default=0.25)
    args = parser.parse_args()
    if not native_bf16(torch.device("cpu")):
        print("note: this CPU has no native bf16 instructions; bf16 runs emulated (slow)")
    load_before = os.getloadavg()[0]
    result = {
        "machine": describe_machine(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "batch_size": args.batch_size,
        "throughput": throughput(args.models.split(","), args.width, args.batch_size, args.steps, args.rounds),
    }
    if not args.skip_accuracy:
        if not (DATA / "cifar10-jpeg.tar.gz").is_file():
            raise SystemExit(f"the CIFAR-10 JPEG copy is not in {DATA}; run with --skip-accuracy")
        result["accuracy"] = accuracy([int(s) for s in args.seeds.split(",")], args.epochs, args.subset, args.accuracy_width)
    result["load_average_1min_before_after"] = [load_before, os.getloadavg()[0]]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average {result['load_average_1min_before_after']}; wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
