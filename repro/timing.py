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
Latencies are in milliseconds per image. repro.steps.time_run writes them to RUN/timing.json with the
device described and the SHA-256 of the checkpoint timed, so a report never shows them beside results of a
later checkpoint.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

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


def nearest_rank(count: int, percent: int) -> int:
    """0-based index of the `percent`-th percentile of `count` sorted values by the nearest-rank method:
    the smallest value with at least `percent`% of the values at or below it, i.e. rank ceil(percent/100 *
    count) (numpy's method="inverted_cdf"). Integer arithmetic, so 95% of 20, 60 and 100 values is exactly
    rank 19, 57 and 95 (index 18, 56, 94), with no float rounding either way."""
    return max(0, -(-percent * count // 100) - 1)


def latency_stats(milliseconds: list[float]) -> dict:
    """mean, median and 95th percentile (nearest rank) of per-image latencies, in ms."""
    ordered = sorted(milliseconds)
    p95 = ordered[nearest_rank(len(ordered), 95)]
    return {"mean_ms": statistics.fmean(ordered), "median_ms": statistics.median(ordered), "p95_ms": p95}


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
