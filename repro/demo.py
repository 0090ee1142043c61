"""`repro demo`: the whole pipeline in one call, small enough for 2 CPU cores (81-91 s measured, bench_demo.py).

On the embedded synthetic data set (no download) with a width-reduced VGG-13, it trains every method
(baseline, bnet, proposed, report-proposed, report-maxprob), evaluates each run (outputs.pt, eval.json)
and times it (timing.json), sweeps the exit thresholds and calibrates them for at most 1 point of
accuracy drop on validation (sweep.csv, calibration.json), and renders the report. Every step is the
library function behind the matching command (`repro train / eval --timing / sweep --max-drop / report`),
so the demo's run directories are ordinary runs that those commands accept.

The numbers are a smoke test of the pipeline, not results: the model is tiny (`width`), trained for a
few epochs on a subset, and the synthetic images are not CIFAR-10.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from repro.errors import check_name
from repro.methods import list_methods


@dataclass
class DemoConfig:
    runs: Path = Path("runs/demo")  # one run directory per method below this folder (replaced)
    out: Path = Path("reports/demo")  # the report folder
    methods: tuple[str, ...] = tuple(list_methods())  # every registered method
    model: str = "vgg13"
    # Channel multiplier: VGG-13 with 16..128 channels instead of 64..512. Small enough to train five methods
    # in about a minute on 2 CPU cores, large enough that early exit pays in wall-clock time: at 0.125 the
    # plain network's batch-1 latency (~0.6 ms) is a few framework calls, so every exit measured the per-call
    # cost, not the network, and measured speed-ups were below 1 however many MACs an exit saved. At 0.25,
    # measured on this project's CPU: bnet 1.9-2.0x (batch 1, mean latency) / 1.6x (batched) for 3.5x fewer MACs.
    width: float = 0.25
    subset: int = 4000  # training images (class-balanced; 20 % of them for validation), and subset // 5 test images
    epochs: int = 6  # passes over the training images
    lr: float = 2e-3  # Adam; the report recipe's 5e-4 barely moves so small a network in 4 epochs
    # A network this narrow and deep learns almost nothing in a few epochs without batch norm (the report's
    # setting: every exit past the fourth stays at chance); with it, and with the cheaper linear classifier
    # and pooling exit heads, all exits learn and training costs about a third of the CPU time.
    batch_norm: bool = True
    classifier: str = "linear"
    head: str = "pool"
    seed: int = 0
    timing_images: int = 100  # test images timed at batch size 1 (and in one batch)
    max_drop: float = 1.0  # calibration target: accuracy points below the final exit, on validation
    device: str = "cpu"


@dataclass
class DemoResult:
    runs: list[Path]
    report: object  # repro.report.ReportResult
    seconds: dict[str, float] = field(default_factory=dict)  # per step: train, eval, timing, sweep, report


def run_demo(config: DemoConfig = DemoConfig(), log: Callable[[str], None] = lambda line: None) -> DemoResult:
    """Train, evaluate, time, sweep, calibrate and report; `log` receives one line per finished step."""
    from repro.config import TrainConfig
    from repro.report import build_report
    from repro.steps import evaluate_run, sweep_run, time_run
    from repro.trainer import fit

    for method in config.methods:
        check_name("method", method, list_methods())
    seconds = {step: 0.0 for step in ("train", "eval", "timing", "sweep", "report")}
    paths = []
    for method in config.methods:
        train_config = TrainConfig.from_recipe(
            "report", model=config.model, method=method, dataset="synthetic", width=config.width,
            subset=config.subset, epochs=config.epochs, lr=config.lr, seed=config.seed,
            batch_norm=config.batch_norm, classifier=config.classifier, head=config.head,
        )
        path = config.runs / f"{config.model}-{method}-synthetic-seed{config.seed}"
        start = time.perf_counter()
        result = fit(train_config, path, overwrite=True, device=config.device)
        run = result.run
        seconds["train"] += time.perf_counter() - start
        log(f"trained {method} in {time.perf_counter() - start:.1f} s ({result.epochs_done} epochs) -> {run.path}")

        start = time.perf_counter()
        summary = evaluate_run(run, device=config.device)
        seconds["eval"] += time.perf_counter() - start
        start = time.perf_counter()
        timing = time_run(run, n_images=config.timing_images, device=config.device)
        seconds["timing"] += time.perf_counter() - start
        log(f"evaluated {method}: final exit {summary['test']['final_accuracy']:.1%}, "
            f"measured speed-up {timing['measured_speedup']['batch1']:.2f}x at batch 1")

        if summary["num_exits"] > 1:
            start = time.perf_counter()
            calibration = sweep_run(run, target={"max_drop": config.max_drop}).calibration.to_dict()
            seconds["sweep"] += time.perf_counter() - start
            log(f"swept {method}: calibrated {calibration['criterion']} for <= {config.max_drop:g} point drop, "
                f"test accuracy {calibration['test']['accuracy']:.1%}, MAC speed-up {calibration['test']['macs_speedup']:.2f}x")
        paths.append(run.path)

    start = time.perf_counter()
    report = build_report(paths, config.out)
    seconds["report"] = time.perf_counter() - start
    return DemoResult(paths, report, seconds)
