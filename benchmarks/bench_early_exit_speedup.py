"""Does early exit really save time? Measured vs MAC-predicted speed-up of a trained VGG-13 at its calibrated point.

The reproduction report's Table 2, done over many images, on a trained network: the test images go
through the network without exits, the full multi-exit network and real early exit at the entropy
threshold calibrated on validation (`repro sweep --max-drop D`), at batch 1 and in batches. Reported:
measured speed-up (plain latency / early-exit latency) beside the MAC-predicted one (plain MACs / mean MACs
of the exits taken) and their ratio (issue 14's goals, for forced exits in bench_exits.py: >= 0.9 at
batch 1, >= 0.85 in batches).

Two ways to get the trained network:
- `--from-run RUN`: an already trained run (for example the learned-gates screen's bnet cell,
  results/gates/screen/bnet: VGG-13 width 0.5, 10 epochs on the full CIFAR-10 JPEG copy). Its files are
  copied to --run-dir first, so the source is never written to.
- otherwise a full-width VGG-13 with the report's recipe and 9 early exits is trained briefly with B-Net on
  a class-balanced subset (issue 5's benchmark); its exits are weak, so few samples may leave early.

Accuracies are on "CIFAR-10 (JPEG copy)", never CIFAR-10 numbers.

    python benchmarks/bench_early_exit_speedup.py --from-run results/gates/screen/bnet --timing-images 1000
    python benchmarks/bench_early_exit_speedup.py [--subset 1000] [--epochs 2] [--timing-images 200]

Writes benchmarks/results/bench_early_exit_speedup_<device>[_<run name>].json (and the run under --run-dir).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def main(args) -> dict:
    from repro import artifacts, rundir, trainer
    from repro.config import TrainConfig
    from repro.environment import select_device
    from repro.steps import evaluate_run, sweep_run, time_run

    from repro.models import inference

    if args.whole_batches:  # the batched path as it was before issue 28: every segment on the whole batch
        inference.PIECE_BYTES = 2**62
    data = Path(args.data)
    if not args.from_run and not data.exists():  # a copied run reads the data its config.json names
        raise SystemExit(f"CIFAR-10 JPEG copy not found at {data}; see /work/shared/data/README.md")
    device = str(select_device(args.device))
    seconds = {}
    if args.from_run:
        run, fit = copy_run(Path(args.from_run), args.run_dir, device), None
        config = artifacts.read_config(run)
        evaluation = artifacts.read_eval(run) if run.has(rundir.EVAL) else None
    else:
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
        start = time.perf_counter()
        fit = trainer.fit(config, run_dir, overwrite=True, device=device)
        run = fit.run
        seconds["train"] = time.perf_counter() - start
        evaluation = None
    if evaluation is None:
        start = time.perf_counter()
        evaluation = evaluate_run(run, batch_size=256, device=device)
        seconds["eval"] = time.perf_counter() - start

    start = time.perf_counter()
    swept = sweep_run(run, criterion="entropy", target={"max_drop": args.max_drop})
    seconds["sweep"] = time.perf_counter() - start
    calibration = swept.calibration
    # eval's default operating point for an entropy method is this same calibration (max drop 1 point); a
    # copied run of another method is timed at its own eval.json operating point, which the summary names.
    if args.max_drop == 1.0 and not args.from_run:
        assert evaluation["operating_point"]["thresholds"] == calibration.thresholds

    start = time.perf_counter()
    timing = time_run(run, n_images=args.timing_images, batch_size=args.batch_size, device=device, threads=args.threads)
    seconds["timing"] = time.perf_counter() - start

    summary = {
        "benchmark": "measured vs MAC-predicted early-exit speed-up at the val-calibrated point",
        "data": "CIFAR-10 (JPEG copy)" + (f", class-balanced subset of {config.subset}" if config.subset else ", full splits"),
        "model": f"{config.model} width {config.width} ({config.recipe} recipe, batch norm {config.batch_norm}, "
                 f"{config.classifier} classifier, head {config.head}), {len(config.exits or [])} early exits",
        "method": f"{config.method} (timed at eval.json's operating point: {evaluation['operating_point']['how']})",
        "source_run": args.from_run,
        "epochs": config.epochs,
        "epochs_trained": fit.epochs_done if fit else None,
        "selected_epoch": fit.selected_epoch if fit else None,
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
        # The same images as a stream of batches (early_exit_stream: every segment on full batches), with its cost in waiting.
        "stream": timing["stream"],
        "exit_fractions_timed": timing["exit_fractions"],
        "early_exit_accuracy_timed": timing["early_exit_accuracy"],
        "goals": "measured / predicted >= 0.9 at batch 1 and >= 0.85 in batches, per batch or as a stream (issues 14 and 28)",
        "pieces": "whole batches (--whole-batches)" if args.whole_batches else
                  f"pieces of at most {inference.PIECE_BYTES} bytes per activation",
        "goals_met": {"batch1": timing["measured_over_predicted"]["batch1"] >= 0.9,
                      "batched": timing["measured_over_predicted"]["batched"] >= 0.85,
                      "stream": timing["stream"]["over_predicted"] >= 0.85},
        "timing_threads": args.threads,
        "load_average_1min": timing.get("load_average_1min"),
        "seconds": seconds,
        "run_dir": str(run.path.resolve().relative_to(ROOT)) if run.path.resolve().is_relative_to(ROOT) else str(run.path),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "cuda" if device.startswith("cuda") else "cpu"
    suffix = (f"_{Path(args.from_run).name}" if args.from_run else "") + ("_whole-batches" if args.whole_batches else "")
    rundir.write_json(RESULTS / f"bench_early_exit_speedup_{name}{suffix}.json", summary)
    return summary


COPY_MARKER = "copied-by-bench.txt"
COPIED_FILES = ("config.json", "env.json", "state.json", "metrics.csv", "train.log", "checkpoint.pt", "outputs.pt", "eval.json")


def copy_run(source: Path, run_dir: str | None, device: str):
    """A copy of a trained run's files (never its last.pt, sweeps or timings) in a fresh directory."""
    from repro import rundir

    if not (source / "checkpoint.pt").exists():
        raise SystemExit(f"{source} has no checkpoint.pt: train it first (its small files alone cannot be timed)")
    target = Path(run_dir or ROOT / "runs" / f"bench-speedup-{source.name}-{device}")
    inside = target.resolve().is_relative_to(source.resolve()) or source.resolve().is_relative_to(target.resolve())
    if inside:
        raise SystemExit(f"--run-dir {target} must lie outside the source run {source} (and not contain it)")
    if target.exists():
        # Only an earlier copy is replaced: never a folder the benchmark did not make.
        if not (target / COPY_MARKER).exists():
            raise SystemExit(f"{target} exists and is not an earlier copy made by this benchmark; choose another --run-dir")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / COPY_MARKER).write_text(f"copied from {source} by benchmarks/bench_early_exit_speedup.py\n")
    for name in COPIED_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    return rundir.open_run(target)


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
    parser.add_argument("--from-run", default=None, help="time this trained run (copied to --run-dir) instead of training one")
    parser.add_argument("--whole-batches", action="store_true",
                        help="time the batched path without pieces (every segment on the whole batch, as before issue 28)")
    summary = main(parser.parse_args())
    print(json.dumps({k: summary[k] for k in ("device", "calibration", "macs_speedup", "measured_speedup", "measured_over_predicted", "goals_met", "seconds")}
                      | {"stream_over_predicted": summary["stream"]["over_predicted"]}, indent=2))
