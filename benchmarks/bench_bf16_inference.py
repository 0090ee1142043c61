"""bf16 inference on a CPU with native bf16: how much faster, and what it changes (issue 28).

`repro eval` reports float32 inference, and its exit decisions and accuracies are float32's. This benchmark
asks what a user would get from casting a trained network to bfloat16 for inference (weights and inputs;
this project's CPU, AMD EPYC with AVX-512 BF16, runs bf16 convolutions and matrix products natively):

- what it changes, over the whole test split at the run's calibrated operating point (eval.json): the share
  of images whose exit, and whose prediction, differ from float32's; the early-exit accuracy and the final
  exit's accuracy (the network without exits) in each precision; the MAC speed-up of the exits taken;
- speed, on `--timing-images` test images (repro.timing.sample_images, the images `repro eval --timing`
  times): the plain network and batched early exit in both precisions, the four paths in turn batch by
  batch (drifts hit all alike) for `--rounds` rounds; and batch 1 on the first `--batch1-images` of them,
  each image's median over three repeats, averaged (repro.timing's batch-1 statistic).

Speed-ups: early exit over the plain network in the same precision (the MAC prediction's figure), bf16
over float32 for each path, and bf16 early exit over the float32 plain network (what the user gains).

    python benchmarks/bench_bf16_inference.py --threads 2 --from-run runs/retrained-cpu/bnet-cifar10-jpeg \
        --from-run runs/retrained-cpu/second-seed-bnet --from-run runs/retrained-cpu/full-width-bnet

Writes benchmarks/results/bench_bf16_inference_<device>.json and .md (or --out, without its extension).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load(run_path: str, device: torch.device):
    """(run name, float32 model, normalised test images, labels, criterion, thresholds) as `repro eval` loads them."""
    from repro import artifacts, rundir
    from repro.data import DeviceLoader
    from repro.rebuild import load_run

    run = rundir.open_run(Path(run_path))
    loaded = load_run(run.path, device=str(device))
    images, labels = loaded.splits["test"]
    x, y = next(iter(DeviceLoader(images, labels, len(images), str(device), loaded.dataset.mean, loaded.dataset.std)))
    point = artifacts.read_eval(run)["operating_point"]
    thresholds = torch.tensor(point["thresholds"], dtype=torch.float64)
    return run.name, loaded.model.eval(), x, y.cpu(), point["criterion"], thresholds


def decisions(models: dict, x: torch.Tensor, y: torch.Tensor, criterion: str, thresholds, batch_size: int) -> dict:
    """Each precision's exits and predictions over all of x, in batches, and how they compare with float32's."""
    from repro.models.inference import early_exit_batched, run_plain

    out = {}
    for name, model in models.items():
        xs = x.to(PRECISIONS[name])
        early = early_exit_batched(model, xs, criterion, thresholds, batch_size)
        with torch.inference_mode():
            final = torch.cat([run_plain(model, xs[s : s + batch_size]).argmax(dim=-1).cpu()
                               for s in range(0, len(xs), batch_size)])
        out[name] = {"exits": early.exits, "predictions": early.predictions, "final": final,
                     "macs": early.macs.mean().item()}
    plain_macs = models["fp32"].costs.plain_macs
    reference = out["fp32"]
    summary = {}
    for name, result in out.items():
        summary[name] = {
            "early_exit_accuracy": (result["predictions"] == y).double().mean().item(),
            "final_exit_accuracy": (result["final"] == y).double().mean().item(),
            "macs_speedup": plain_macs / result["macs"],
            "exit_fractions": (torch.bincount(result["exits"], minlength=models[name].num_exits).double() / len(y)).tolist(),
        }
    summary["bf16_vs_fp32"] = {
        "exit_differs": (out["bf16"]["exits"] != reference["exits"]).double().mean().item(),
        "early_prediction_differs": (out["bf16"]["predictions"] != reference["predictions"]).double().mean().item(),
        "final_prediction_differs": (out["bf16"]["final"] != reference["final"]).double().mean().item(),
    }
    return summary


def time_batched(models: dict, x: torch.Tensor, criterion: str, thresholds, batch_size: int, rounds: int) -> dict:
    """ms per image of plain and early exit in each precision, the four paths in turn on every batch."""
    from repro.models.inference import early_exit_batched, run_plain

    paths = {}
    for name, model in models.items():
        batches = [b.to(PRECISIONS[name]) for b in x.split(batch_size)]
        paths[f"plain_{name}"] = (lambda m: lambda b: run_plain(m, b))(model), batches
        paths[f"early_exit_{name}"] = (lambda m: lambda b: early_exit_batched(m, b, criterion, thresholds))(model), batches
    for path, batches in paths.values():  # warm-up: first calls pick kernels and allocate
        path(batches[0])
    totals = {key: 0.0 for key in paths}
    for _ in range(rounds):
        for i in range(len(paths["plain_fp32"][1])):
            for key, (path, batches) in paths.items():
                start = time.perf_counter()
                path(batches[i])
                totals[key] += time.perf_counter() - start
    return {key: total * 1000.0 / (rounds * len(x)) for key, total in totals.items()}


def time_batch1(models: dict, x: torch.Tensor, criterion: str, thresholds, repeats: int = 3) -> dict:
    """Mean over images of each image's median latency (ms) over `repeats`, per path, at batch size 1."""
    from repro.models.inference import early_exit_single, run_plain

    paths = {}
    for name, model in models.items():
        xs = x.to(PRECISIONS[name])
        paths[f"plain_{name}"] = (lambda m: lambda b: run_plain(m, b))(model), xs
        paths[f"early_exit_{name}"] = (lambda m: lambda b: early_exit_single(m, b, criterion, thresholds))(model), xs
    for path, xs in paths.values():
        for i in range(min(5, len(xs))):
            path(xs[i : i + 1])
    times = {key: [[] for _ in range(len(x))] for key in paths}
    for _ in range(repeats):
        for i in range(len(x)):
            for key, (path, xs) in paths.items():
                start = time.perf_counter()
                path(xs[i : i + 1])
                times[key][i].append((time.perf_counter() - start) * 1000.0)
    return {key: statistics.fmean(statistics.median(t) for t in per_image) for key, per_image in times.items()}


def speedups(ms: dict) -> dict:
    return {
        "early_exit_fp32": ms["plain_fp32"] / ms["early_exit_fp32"],
        "early_exit_bf16": ms["plain_bf16"] / ms["early_exit_bf16"],
        "plain_bf16_over_fp32": ms["plain_fp32"] / ms["plain_bf16"],
        "early_exit_bf16_over_fp32": ms["early_exit_fp32"] / ms["early_exit_bf16"],
        "early_exit_bf16_over_plain_fp32": ms["plain_fp32"] / ms["early_exit_bf16"],
    }


def bench(run_path: str, args, device: torch.device) -> dict:
    from repro.timing import sample_images

    name, model, x, y, criterion, thresholds = load(run_path, device)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)  # the same weights, rounded to bf16
    models = {"fp32": model, "bf16": bf16}
    effect = decisions(models, x, y, criterion, thresholds, args.batch_size)
    timed = x[sample_images(len(x), args.timing_images).to(x.device)]
    batched = time_batched(models, timed, criterion, thresholds, args.batch_size, args.rounds)
    batch1 = time_batch1(models, timed[: args.batch1_images], criterion, thresholds)
    return {"run": name, "source": run_path, "criterion": criterion, "test_images": len(y), **effect,
            "batched_ms_per_image": batched, "batched_speedup": speedups(batched),
            "batch1_ms": batch1, "batch1_speedup": speedups(batch1)}


def markdown(result: dict) -> str:
    lines = [f"# bf16 inference ({result['device']}, torch {result['torch']}, batch {result['batch_size']})", "",
             "| run | exit differs | prediction differs (early / final) | early-exit accuracy fp32 / bf16 | "
             "final exit fp32 / bf16 | MACs fp32 / bf16 | batch 256: early exit / plain, fp32 / bf16 | "
             "bf16 / fp32 (plain, early exit) | bf16 early exit / fp32 plain | batch 1: same four |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["runs"]:
        d, b, s = r["bf16_vs_fp32"], r["batched_speedup"], r["batch1_speedup"]
        lines.append(
            f"| {r['run']} | {d['exit_differs']:.2%} | {d['early_prediction_differs']:.2%} / {d['final_prediction_differs']:.2%} | "
            f"{r['fp32']['early_exit_accuracy']:.2%} / {r['bf16']['early_exit_accuracy']:.2%} | "
            f"{r['fp32']['final_exit_accuracy']:.2%} / {r['bf16']['final_exit_accuracy']:.2%} | "
            f"{r['fp32']['macs_speedup']:.2f}x / {r['bf16']['macs_speedup']:.2f}x | "
            f"{b['early_exit_fp32']:.2f}x / {b['early_exit_bf16']:.2f}x | "
            f"{b['plain_bf16_over_fp32']:.2f}x, {b['early_exit_bf16_over_fp32']:.2f}x | {b['early_exit_bf16_over_plain_fp32']:.2f}x | "
            f"{s['early_exit_fp32']:.2f}x / {s['early_exit_bf16']:.2f}x; {s['plain_bf16_over_fp32']:.2f}x, "
            f"{s['early_exit_bf16_over_fp32']:.2f}x; {s['early_exit_bf16_over_plain_fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(args) -> dict:
    from repro.environment import describe_device, describe_machine

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    runs = [bench(run, args, device) for run in args.from_run]
    result = {"benchmark": "bf16 against float32 inference of trained runs (issue 28)",
              "device": describe_device(device), "machine": describe_machine(device), "torch": torch.__version__, "batch_size": args.batch_size,
              "timing_images": args.timing_images, "batch1_images": args.batch1_images, "rounds": args.rounds,
              "load_average_1min": load_before, "load_average_1min_after": os.getloadavg()[0], "runs": runs}
    out = Path(args.out) if args.out else RESULTS / f"bench_bf16_inference_{device.type}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", action="append", required=True, help="a trained run (checkpoint.pt, eval.json); repeatable")
    parser.add_argument("--timing-images", type=int, default=1000)
    parser.add_argument("--batch1-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="output path without extension")
    main(parser.parse_args())
