"""Measured early-exit latency: `repro eval --timing`, the reproduction report's Table 2 done over many images.

The report timed one random image; here N test images (default 1000, a seeded random sample: `sample_images`) go through three paths, with the
same weights, on the same device, interleaved image by image at batch size 1 so that drifts in clock
speed or load hit all three alike:

- `plain`: the network without exits (`repro.models.inference.run_plain`: backbone and final classifier);
- `full`: the multi-exit network run to the end (every branch and gate evaluated, `run_every_exit`);
- `early_exit`: real early exit at the run's operating point (eval.json), which skips the rest of the
  network once an exit fires (`early_exit_single` at batch 1, `early_exit_batched` in batches, where the
  samples that left are dropped before the next segment runs).

The whole batch-1 pass is repeated (REPEATS, 3 by default). An image's latency on a path is its median
over the repeats (an image always takes the same exit, so its repeats differ by noise only, and the median
drops the call a busy machine slowed down); a path's latency is the mean of those over the images
(BATCH1_STATISTIC). A mean, not a median: with early exit, images take different exits, and the median
image's latency is not the average cost that the MAC speed-up (plain MACs / mean MACs) predicts: when more
than half of the images leave at the first exit, the median is the first exit's latency alone. The batch-1
speed-up is the ratio of the paths' mean latencies; each repeat's own ratio of means gives its spread
((largest - smallest) / the speed-up): a speed-up whose repeats disagree by more than SPREAD_WARNING is
flagged, not trusted.

In batches (--batch-size), the N images are split into batches and every batch is timed on its own,
again path by path in turn; a batch's per-image latency is its time / its size. The images go through in
rounds (at least REPEATS, and enough for MIN_TIMED_BATCHES batches per path), so that a median and a 95th
percentile over batches are more than the few values there are; each round gives a throughput speed-up
(total times), and the reported batched speed-up is the pooled one, with the rounds' spread. The batched
mean (`ms_per_image`, also `mean_ms`) is total time / images timed (a smaller last batch counts for its size).

The same images are also timed as one stream (`early_exit_stream`, `stream` in timing.json; repeated
towards STREAM_MIN_BATCHES batches, REPEATS passes): batches of batch_size enter one after another and
the samples that stay queue before their next segment, which runs on full batches only; its throughput
speed-up over the plain network comes with what it costs: per image, the input batches that entered after its own before it was decided (0 for most; the deep ones wait).

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
STREAM_MIN_BATCHES = 20  # input batches a timed stream aims at (the images repeated): see _time_stream
STREAM_MAX_COPIES = 5  # ... repeated at most this often (the demo's 100 images would otherwise be timed 52 times over)
REPEATS = 3  # passes over all images, each giving one speed-up: their spread says how far to trust it
SPREAD_WARNING = 0.2  # a relative spread of the repeats' speed-ups above this is too large to read a speed-up from
# What timing.json's batch-1 latencies and speed-up are, and which images: a file without these (an older
# repro: ratios of median latencies, on the first test images) is re-timed rather than read beside the MAC
# speed-up. The first test images are no sample: a data set stored class by class (the CIFAR-10 JPEG copy's
# first 1000 test images are all airplanes) exits, and so times, like one class.
BATCH1_STATISTIC = "mean over images of each image's median latency over the repeats"
IMAGES = "a random sample of the test split (seed 0)"
SAMPLE_SEED = 0


def sample_images(count: int, n_images: int) -> torch.Tensor:
    """Indices (ascending) of the `n_images` test images to time out of `count`: a seeded random sample, the
    same for every run on the same data set, so that methods are timed on the same images; all of them when
    n_images >= count."""
    if n_images >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    return torch.randperm(count, generator=generator)[:n_images].sort().values


def wall_clock(device: torch.device):
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
    """mean, median and 95th percentile (nearest rank) of per-image latencies, in ms (at batch 1, each
    image's median over the repeats: the p95 is the slow images', not one call a busy machine slowed)."""
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


def measure(model, x: torch.Tensor, targets: torch.Tensor, criterion: str, thresholds, plain_macs: float, batch_size: int = 256,
            repeats: int = REPEATS) -> dict:
    """Time plain, full and early-exit inference over x [N, C, H, W] (normalised, on the model's device),
    `repeats` times over all images, so that the speed-up comes with its spread across repeats.

    Returns timing.json's body without the device and operating point.
    """
    from repro.models.inference import early_exit_batched, early_exit_single, run_every_exit, run_plain

    if len(x) == 0:
        raise ReproError("no images to time")
    device = x.device
    now = wall_clock(device)
    model.eval()

    paths = {
        "plain": lambda batch: run_plain(model, batch),
        "full": lambda batch: run_every_exit(model, batch),
        "early_exit": lambda batch: early_exit_single(model, batch, criterion, thresholds),
    }
    for path in paths.values():
        for i in range(min(WARMUP_IMAGES, len(x))):
            path(x[i : i + 1])

    # Batch size 1, interleaved: image i through each path in turn; the whole pass `repeats` times.
    rounds_ms = []  # per repeat: path -> [ms per image]
    results = []
    for repeat in range(repeats):
        this_round = {name: [] for name in paths}
        for i in range(len(x)):
            image = x[i : i + 1]
            for name, path in paths.items():
                start = now()
                output = path(image)
                this_round[name].append((now() - start) * 1000.0)
                if name == "early_exit" and repeat == 0:
                    results.append(output)
        rounds_ms.append(this_round)
    # Each image's median over the repeats, per path (BATCH1_STATISTIC); each repeat's ratio of mean latencies.
    per_image = {name: [statistics.median(r[name][i] for r in rounds_ms) for i in range(len(x))] for name in paths}
    round_speedups = [statistics.fmean(r["plain"]) / statistics.fmean(r["early_exit"]) for r in rounds_ms]
    predictions = torch.cat([r.predictions for r in results])
    macs = torch.cat([r.macs for r in results])

    # Batches of batch_size, in rounds (at least `repeats`, and up to MIN_TIMED_BATCHES batches per path).
    batches = [x[s : s + batch_size] for s in range(0, len(x), batch_size)]
    rounds = max(repeats, math.ceil(MIN_TIMED_BATCHES / len(batches)))
    batched, batched_rounds = _time_batches(
        {
            "plain": lambda batch: run_plain(model, batch),
            "full": lambda batch: run_every_exit(model, batch),
            "early_exit": lambda batch: early_exit_batched(model, batch, criterion, thresholds),
        },
        batches, rounds, now,
    )

    stream = _time_stream(model, batches, criterion, thresholds, batch_size, repeats, now)

    batch1 = {name: latency_stats(values) for name, values in per_image.items()}
    batch1_speedup = batch1["plain"]["mean_ms"] / batch1["early_exit"]["mean_ms"]
    batched_speedup = batched["plain"]["ms_per_image"] / batched["early_exit"]["ms_per_image"]
    measured = {
        # Batch 1: plain over early-exit mean latency (BATCH1_STATISTIC: each image's median over the repeats,
        # robust to the outliers a shared machine produces); batched: total time over total time (throughput).
        "batch1": batch1_speedup,
        "batched": batched_speedup,
        "batch1_rounds": round_speedups,
        "batched_rounds": batched_rounds,
        # (largest - smallest repeat) / the figure: above SPREAD_WARNING a speed-up cannot be read from it.
        "batch1_spread": (max(round_speedups) - min(round_speedups)) / batch1_speedup,
        "batched_spread": (max(batched_rounds) - min(batched_rounds)) / batched_speedup,
        # The median image's latency ratio: for a mix of exits, how fast the typical image is, not the
        # average cost (in `repro eval`'s caption, never compared with the MAC speed-up).
        "batch1_median": batch1["plain"]["median_ms"] / batch1["early_exit"]["median_ms"],
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
        "batch1_statistic": BATCH1_STATISTIC,
        "measured_over_predicted": {key: measured[key] / macs_speedup for key in ("batch1", "batched")},
        "stream": {**stream, "over_predicted": stream["speedup"] / macs_speedup},
        "early_exit_accuracy": (predictions == targets.cpu()).double().mean().item(),
        "exit_fractions": (torch.bincount(torch.cat([r.exits for r in results]), minlength=model.num_exits).double() / len(x)).tolist(),
    }


def _time_stream(model, batches: list[torch.Tensor], criterion: str, thresholds, batch_size: int, rounds: int, now) -> dict:
    """The images as one stream (`early_exit_stream`: every segment on full batches), `rounds` times, each
    time beside the plain network over the same batches: throughput speed-up (pooled, and per round), and
    the latency it costs: per image, the input batches that entered after its own before it was decided.
    The images are repeated (at most STREAM_MAX_COPIES times) towards STREAM_MIN_BATCHES batches: in a stream
    of four, the deep segments would run once, on what waits when it ends, and no wait could exceed three
    batches. `rounds` passes of a stream that long already average 20 batches each."""
    from repro.models.inference import early_exit_stream, run_plain

    images = torch.cat(batches)
    copies = min(STREAM_MAX_COPIES, max(1, math.ceil(STREAM_MIN_BATCHES * batch_size / len(images))))
    x = images.repeat(copies, *([1] * (images.dim() - 1))) if copies > 1 else images
    plain_batches = [x[s : s + batch_size] for s in range(0, len(x), batch_size)]
    result = early_exit_stream(model, x, criterion, thresholds, batch_size)  # warm-up; the waits are the same every time
    plain_ms, stream_ms, speedups = 0.0, 0.0, []
    for _ in range(rounds):
        start = now()
        for batch in plain_batches:
            run_plain(model, batch)
        plain = (now() - start) * 1000.0
        start = now()
        early_exit_stream(model, x, criterion, thresholds, batch_size)
        elapsed = (now() - start) * 1000.0
        plain_ms, stream_ms = plain_ms + plain, stream_ms + elapsed
        speedups.append(plain / elapsed)
    waited = sorted(result.waited.tolist())
    delayed = [w for w in waited if w > 0]
    return {
        "images": len(x),
        "input_batches": len(plain_batches),
        "ms_per_image": stream_ms / (rounds * len(x)),
        "plain_ms_per_image": plain_ms / (rounds * len(x)),
        "speedup": plain_ms / stream_ms,
        "rounds": speedups,
        # Over every image (0 for those decided in their own step), and over the images that waited at all.
        "waited_batches": {"mean": sum(waited) / len(waited), "p95": waited[nearest_rank(len(waited), 95)],
                           "max": waited[-1], "share_delayed": len(delayed) / len(waited),
                           "mean_delayed": sum(delayed) / len(delayed) if delayed else 0.0},
    }


def _time_batches(paths: dict, batches: list[torch.Tensor], rounds: int, now) -> tuple[dict, list[float]]:
    """Time every path on every batch, `rounds` times, batch by batch and path by path in turn (drifts hit
    all paths alike), after one untimed warm-up batch each. Returns `batched_stats` per path, and per round
    the throughput speed-up (plain total time / early-exit total time)."""
    for path in paths.values():
        path(batches[0])
    milliseconds = {name: [] for name in paths}
    speedups = []
    for _ in range(rounds):
        totals = {name: 0.0 for name in paths}
        for batch in batches:
            for name, path in paths.items():
                start = now()
                path(batch)
                elapsed = (now() - start) * 1000.0
                milliseconds[name].append(elapsed)
                totals[name] += elapsed
        speedups.append(totals["plain"] / totals["early_exit"])
    sizes = [len(batch) for batch in batches] * rounds
    return {name: batched_stats(values, sizes) for name, values in milliseconds.items()}, speedups
