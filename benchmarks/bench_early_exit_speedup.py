"""Does early exit really save time? Measured vs MAC-predicted speed-up of a VGG-13 at its calibrated point.

Issue 5's benchmark (the reproduction report's Table 2, done over many images): a full-width VGG-13 with
the report's recipe (no batch norm, 512-4096-4096-C classifier, Adam 5e-4) and 9 early exits is trained
briefly with B-Net (entropy criterion) on a class-balanced subset of the CIFAR-10 JPEG copy; `repro eval`
stores its outputs; `repro sweep --max-drop D` calibrates the entropy threshold on validation; then the
test images go through the network without exits, the full multi-exit network and real early exit at the
calibrated thresholds, at batch 1 and in batches. Reported: measured speed-up (plain latency / early-exit
latency) beside the MAC-predicted one (plain MACs / mean MACs of the exits taken) and their ratio.
Goal: measured / predicted >= 0.8 at batch 1.

A briefly trained network has weak early exits, so the calibrated point may leave few samples early;
the ratio measured / predicted is what this checks (does skipped work turn into saved time?), not the
size of the speed-up. Accuracies are on "CIFAR-10 (JPEG copy)", never CIFAR-10 numbers.

    python benchmarks/bench_early_exit_speedup.py [--subset 1000] [--epochs 2] [--timing-images 200] [--threads 1]

Writes benchmarks/results/bench_early_exit_speedup_<device>.json (and the run under --run-dir).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def main(args) -> dict:
    from repro import rundir, trainer
    from repro.config import TrainConfig
    from repro.environment import select_device
    from repro.steps import evaluate_run, sweep_run, time_run

    data = Path(args.data)
    if not data.exists():
        raise SystemExit(f"CIFAR-10 JPEG copy not found at {data}; see /work/shared/data/README.md")
    device = str(select_device(args.device))
    torch.manual_seed(0)
    config = TrainConfig.from_recipe(
        "report",
        model="vgg13",
        method="bnet",
        dataset="cifar10-jpeg",
        data_dir=str(data.parent),
        subset=args.subset,
        epochs=args.epochs,
        lr=args.lr,
        batch_norm=args.batch_norm or None,
        seed=0,
    )
    run_dir = Path(args.run_dir or ROOT / "runs" / f"bench-speedup-vgg13-bnet-cifar10jpeg-{device}")
    seconds = {}
    start = time.perf_counter()
    fit = trainer.fit(config, run_dir, overwrite=True, device=device)
    run = fit.run
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    evaluation = evaluate_run(run, batch_size=256, device=device)
    seconds["eval"] = time.perf_counter() - start
    start = time.perf_counter()
    swept = sweep_run(run, criterion="entropy", target={"max_drop": args.max_drop})
    seconds["sweep"] = time.perf_counter() - start
    calibration = swept.calibration
    # eval's default operating point for an entropy method is this same calibration (max drop 1 point).
    if args.max_drop == 1.0:
        assert evaluation["operating_point"]["thresholds"] == calibration.thresholds

    start = time.perf_counter()
    timing = time_run(run, n_images=args.timing_images, batch_size=args.batch_size, device=device, threads=args.threads)
    seconds["timing"] = time.perf_counter() - start

    summary = {
        "benchmark": "measured vs MAC-predicted early-exit speed-up at the val-calibrated point",
        "data": "CIFAR-10 (JPEG copy), class-balanced subset",
        "model": f"vgg13 (full width, report recipe{' + batch norm' if args.batch_norm else ', no batch norm'}, "
                 f"512-4096-4096-C classifier, Adam lr {args.lr}), 9 early exits",
        "method": "bnet (entropy criterion)",
        "subset_train_pool": args.subset,
        "epochs_trained": fit.epochs_done,
        "selected_epoch": fit.selected_epoch,
        "calibration": calibration.to_dict(),
        "final_exit_test_accuracy": evaluation["test"]["final_accuracy"],
        "device": timing["device"],
        "timing_images": timing["n_images"],
        "batch_size": timing["batch_size"],
        "plain_macs": evaluation["plain_macs"],
        "macs_speedup": timing["macs_speedup"],
        "measured_speedup": timing["measured_speedup"],
        "measured_over_predicted": timing["measured_over_predicted"],
        "latency_ms": {"batch1": timing["batch1"], "batched": timing["batched"]},
        "exit_fractions_timed": timing["exit_fractions"],
        "early_exit_accuracy_timed": timing["early_exit_accuracy"],
        "goal": "measured / predicted >= 0.8 at batch 1",
        "goal_met": timing["measured_over_predicted"]["batch1"] >= 0.8,
        "timing_threads": args.threads,
        "load_average_1min": timing.get("load_average_1min"),
        "seconds": seconds,
        "run_dir": str(run.path),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "cuda" if device.startswith("cuda") else "cpu"
    rundir.write_json(RESULTS / f"bench_early_exit_speedup_{name}.json", summary)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="the CIFAR-10 JPEG tarball (or its extracted root)")
    parser.add_argument("--subset", type=int, default=1000, help="training-pool images (val is 20%% of them; test = subset // 5)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (the report's 5e-4)")
    parser.add_argument("--batch-norm", action="store_true",
                        help="batch norm after each conv: without it a few epochs leave the deep exits near chance")
    parser.add_argument("--max-drop", type=float, default=1.0, help="accuracy points vs the final exit, on val")
    parser.add_argument("--timing-images", type=int, default=200, help="test images timed (at most subset // 5 exist)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (1: steady on a shared machine)")
    parser.add_argument("--run-dir", default=None)
    summary = main(parser.parse_args())
    print(json.dumps({k: summary[k] for k in ("device", "calibration", "macs_speedup", "measured_speedup", "measured_over_predicted", "goal_met", "seconds")}, indent=2))
