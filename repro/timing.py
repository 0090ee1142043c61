"""Measured early-exit latency: `repro eval --timing`, the reproduction report's Table 2 done over many images.

The report timed one random image; here N test images (default 1000) go through three paths, with the
same weights, on the same device, interleaved image by image at batch size 1 so that drifts in clock
speed or load hit all three alike:

- `plain`: the network without exits (`repro.models.inference.run_plain`: backbone and final classifier);
- `full`: the multi-exit network run to the end (every branch and gate evaluated, `model(x)`);
- `early_exit`: real early exit at the run's operating point (eval.json), which skips the rest of the
  network once an exit fires (`early_exit_single` at batch 1, `early_exit_batched` in batches, where the
  samples that left are dropped before the next segment runs).

In batches (--batch-size), the N images are split into batches and every batch is timed on its own,
again path by path in turn; a batch's per-image latency is its time / its size. With fewer than
MIN_TIMED_BATCHES batches the images go through again (`batch_rounds` times), so that a median and a 95th
percentile over batches are more than the few values there are. The batched mean (`ms_per_image`, also
`mean_ms`) is total time / images timed, the throughput figure (a smaller last batch counts for its size).

Measured speed-up = plain latency / early-exit latency (Scardapane et al. 2020 report the MAC ratio only);
it is written beside the MAC-predicted speed-up plain_macs / mean MACs of the exits actually taken.
Latencies are in milliseconds per image. Results go to RUN/timing.json with the device described and the
SHA-256 of the checkpoint timed, so a report never shows them beside results of a later checkpoint.
"""

from __future__ import annotations

import math
import os
import statistics
import time

import torch

from repro import rundir
from repro.environment import describe_device
from repro.errors import ReproError

WARMUP_IMAGES = 5  # per path, untimed: first calls allocate buffers and pick kernels
# Per path: fewer batches than this are timed again in rounds (a p95 over 4 batches would be their maximum).
MIN_TIMED_BATCHES = 10


def _clock(device: torch.device):
    """A wall clock that waits for queued GPU work first, so a timed region ends when its work does."""
    if device.type == "cuda":
        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.perf_counter


def latency_stats(milliseconds: list[float]) -> dict:
    """mean, median and 95th percentile (nearest rank) of per-image latencies, in ms."""
    ordered = sorted(milliseconds)
    rank = max(0, min(len(ordered) - 1, int(round(0.95 * len(ordered) + 0.5)) - 1))
    return {"mean_ms": statistics.fmean(ordered), "median_ms": statistics.median(ordered), "p95_ms": ordered[rank]}


def batched_stats(milliseconds: list[float], sizes: list[int]) -> dict:
    """Per-image latency over timed batches, in ms: batch time / batch size, then median and p95 over batches.

    The mean (`mean_ms`, and `ms_per_image` that the report and older readers use) is total time / images
    timed: the throughput figure that measured_speedup["batched"] has always divided; with batches of equal
    size it is also the mean over batches.
    """
    stats = latency_stats([ms / size for ms, size in zip(milliseconds, sizes)])
    mean = sum(milliseconds) / sum(sizes)
    return {"ms_per_image": mean, **stats, "mean_ms": mean}


def measure(model, x: torch.Tensor, targets: torch.Tensor, criterion: str, thresholds, plain_macs: float, batch_size: int = 256) -> dict:
    """Time plain, full and early-exit inference over x [N, C, H, W] (normalised, on the model's device).

    Returns timing.json's body without the device and operating point.
    """
    from repro.models.inference import early_exit_batched, early_exit_single, run_plain

    if len(x) == 0:
        raise ReproError("no images to time")
    device = x.device
    now = _clock(device)
    model.eval()

    def full(batch):
        with torch.inference_mode():
            return model(batch)

    paths = {
        "plain": lambda batch: run_plain(model, batch),
        "full": full,
        "early_exit": lambda batch: early_exit_single(model, batch, criterion, thresholds),
    }
    for path in paths.values():
        for i in range(min(WARMUP_IMAGES, len(x))):
            path(x[i : i + 1])

    # Batch size 1, interleaved: image i through each path in turn.
    single = {name: [] for name in paths}
    results = []
    for i in range(len(x)):
        image = x[i : i + 1]
        for name, path in paths.items():
            start = now()
            output = path(image)
            single[name].append((now() - start) * 1000.0)
            if name == "early_exit":
                results.append(output)
    predictions = torch.cat([r.predictions for r in results])
    macs = torch.cat([r.macs for r in results])

    # Batches of batch_size, in rounds up to MIN_TIMED_BATCHES per path.
    batches = [x[s : s + batch_size] for s in range(0, len(x), batch_size)]
    rounds = math.ceil(MIN_TIMED_BATCHES / len(batches))
    batched = _time_batches(
        {
            "plain": lambda batch: run_plain(model, batch),
            "full": full,
            "early_exit": lambda batch: early_exit_batched(model, batch, criterion, thresholds),
        },
        batches * rounds,
        now,
    )

    batch1 = {name: latency_stats(values) for name, values in single.items()}
    measured = {
        "batch1": batch1["plain"]["mean_ms"] / batch1["early_exit"]["mean_ms"],
        "batched": batched["plain"]["ms_per_image"] / batched["early_exit"]["ms_per_image"],
        # Medians resist the outliers a shared machine produces; the means above are the throughput figures.
        "batch1_median": batch1["plain"]["median_ms"] / batch1["early_exit"]["median_ms"],
        "batched_median": batched["plain"]["median_ms"] / batched["early_exit"]["median_ms"],
    }
    macs_speedup = plain_macs / macs.mean().item()
    return {
        "n_images": len(x),
        "batch_size": batch_size,
        "batch_rounds": rounds,
        "batch1": batch1,
        "batched": batched,
        "measured_speedup": measured,
        "macs_speedup": macs_speedup,
        "measured_over_predicted": {key: value / macs_speedup for key, value in measured.items()},
        "early_exit_accuracy": (predictions == targets.cpu()).double().mean().item(),
        "exit_fractions": (torch.bincount(torch.cat([r.exits for r in results]), minlength=model.num_exits).double() / len(x)).tolist(),
    }


def _time_batches(paths: dict, batches: list[torch.Tensor], now) -> dict:
    """Time every path on every batch, batch by batch and path by path in turn (drifts hit all paths alike),
    after one untimed warm-up batch each; returns `batched_stats` per path."""
    for path in paths.values():
        path(batches[0])
    milliseconds = {name: [] for name in paths}
    for batch in batches:
        for name, path in paths.items():
            start = now()
            path(batch)
            milliseconds[name].append((now() - start) * 1000.0)
    sizes = [len(batch) for batch in batches]
    return {name: batched_stats(values, sizes) for name, values in milliseconds.items()}


def time_run(run: rundir.RunDir, n_images: int = 1000, batch_size: int = 256, device: str = "cpu", threads: int | None = None) -> dict:
    """`repro eval RUN --timing`: time the run's operating point (from eval.json) on its first test images.

    threads: CPU threads for torch while timing (None: leave torch's setting). On a machine shared with
    other work, 1 thread avoids intra-op barriers waiting for a descheduled thread, which can slow small
    batch-1 layers several-fold and would measure the load, not the network.
    """
    if threads is not None and threads < 1:
        raise ReproError(f"--threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_run(run, n_images, batch_size, device)
    finally:
        torch.set_num_threads(previous)


def _time_run(run: rundir.RunDir, n_images: int, batch_size: int, device: str) -> dict:
    from repro.build import load_run
    from repro.data import DeviceLoader

    if n_images < 1:
        raise ReproError(f"--timing-images must be at least 1, got {n_images}")
    if batch_size < 1:
        raise ReproError(f"--batch-size must be at least 1, got {batch_size}")
    evaluation = rundir.read_json(
        rundir.require(run, rundir.EVAL, f"run `repro eval {run.path}` first"), f"{rundir.EVAL} of run {run.path}"
    )
    checkpoint = rundir.require_checkpoint(run)
    checkpoint_sha256 = rundir.file_sha256(checkpoint)
    if evaluation.get("checkpoint_sha256") != checkpoint_sha256:
        raise ReproError(f"{run.file(rundir.EVAL)} comes from another checkpoint; recompute it with `repro eval {run.path}`")
    point = evaluation["operating_point"]
    loaded = load_run(run.path, device=device)
    model = loaded.model
    criterion, thresholds = point["criterion"], point["thresholds"]
    if criterion is None:
        if model.num_exits > 1:
            raise ReproError(f"eval.json of run {run.path} has no early-exit operating point ({point['how']}); nothing to time")
        criterion, thresholds = "entropy", []  # one classifier: every path ends at the final exit
    images, labels = loaded.splits["test"]
    images, labels = images[:n_images], labels[:n_images]
    x, y = next(iter(DeviceLoader(images, labels, len(images), device, loaded.dataset.mean, loaded.dataset.std)))
    body = measure(model, x, y, criterion, thresholds, float(evaluation["plain_macs"]), batch_size)
    # The checkpoint may have changed while we timed (a training run finishing): never label the timing wrongly.
    if rundir.file_sha256(checkpoint) != checkpoint_sha256:
        raise ReproError(f"{checkpoint} changed while it was being timed; run `repro eval {run.path} --timing` again")
    timing = {
        "device": describe_device(torch.device(device)),
        "n_images": body.pop("n_images"),
        "batch_size": body.pop("batch_size"),
        "operating_point": {"criterion": point["criterion"], "thresholds": point["thresholds"]},
        "checkpoint_sha256": checkpoint_sha256,
        **body,
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    rundir.write_json(run.file(rundir.TIMING), timing)
    return timing
