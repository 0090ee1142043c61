"""Loader throughput: repro's DeviceLoader against a torch DataLoader over PIL images, and the loader's cost
as a fraction of one VGG-13 training step at batch 128 (issue 2's goal: under 5%).

Both loaders produce the same thing: shuffled batches of 128 normalised float32 [128, 3, 32, 32] images
with random crop (4-pixel zero padding) and horizontal flip. DeviceLoader does it with one gather per batch
on the device; the DataLoader reference does it per image with PIL (ImageOps.expand, Image.crop,
Image.transpose; torchvision is not used) in `--workers` worker processes, then stacks and normalises.
The first batch of each loader is not timed (worker start-up, first touch of memory). The training step is
repro.models' VGG-13 (the default report options, no exits, and with its default exits): forward, the
cross-entropy of every exit, backward and an SGD step, `--warmup` untimed then `--steps` timed.

    python benchmarks/bench_loader.py                 # CPU; writes benchmarks/results/bench_loader_cpu.{json,md}
    python benchmarks/bench_loader.py --device cuda   # the same on a GPU
    python benchmarks/bench_loader.py --threads 1 --tag 1thread   # one torch thread

Data: the CIFAR-10 JPEG copy in ../shared/data when present (decoded once into the cache), else the
embedded synthetic set; throughput does not depend on which.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from repro.data import DeviceLoader, load_dataset
from repro.models import create_model
from repro.environment import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CIFAR_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
PAD = 4  # pixels, as DeviceLoader


class PilAugmentDataset(torch.utils.data.Dataset):
    """The usual per-image pipeline: PIL pad + random crop + random flip, then to a normalised tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        self.images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
        self.labels = labels.tolist()
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        width, height = image.size
        padded = ImageOps.expand(image, border=PAD, fill=0)
        top, left = (int(v) for v in torch.randint(0, 2 * PAD + 1, (2,)))
        image = padded.crop((left, top, left + width, top + height))
        if torch.rand(()) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - self.mean) / self.std), self.labels[index]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_loader(make_iterator, batches: int, device: torch.device) -> dict:
    """Seconds per batch over `batches` batches after an untimed first one (batches are moved to `device`)."""
    iterator = make_iterator()
    x, y = next(iterator)
    x.to(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        x, y = next(iterator)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    sync(device)
    seconds = (time.perf_counter() - start) / batches
    return {"ms_per_batch": 1000 * seconds, "batches_per_second": 1 / seconds}


def endless(loader):
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_training_step(exits, batch_size: int, steps: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = create_model("vgg13", 10, 3, 32, exits=exits).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    times = []
    for step in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        output = model(x)
        loss = sum(torch.nn.functional.cross_entropy(logits, y) for logits in output.logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {"num_exits": model.num_exits, "ms_per_step": 1000 * statistics.median(times), "steps_timed": steps}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=100, help="timed batches per loader")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to try")
    parser.add_argument("--steps", type=int, default=3, help="timed VGG-13 training steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()

    if CIFAR_JPEG.is_file():
        dataset, data_name = load_dataset("imagefolder", data_dir=CIFAR_JPEG), "CIFAR-10 (JPEG copy), 50,000 train images"
    else:
        dataset, data_name = load_dataset("synthetic"), "synthetic, 10,000 train images"
    images, labels = dataset.splits["train"]

    loaders = {}
    device_loader = DeviceLoader(
        images, labels, args.batch_size, device, dataset.mean, dataset.std, shuffle=True, seed=0, crop=True, flip=True
    )
    loaders["DeviceLoader"] = time_loader(lambda: endless(device_loader), args.batches, device)
    pil_dataset = PilAugmentDataset(images, labels, dataset.mean, dataset.std)
    for workers in args.workers:
        data_loader = torch.utils.data.DataLoader(
            pil_dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        )
        loaders[f"DataLoader+PIL, {workers} workers"] = time_loader(lambda: endless(data_loader), args.batches, device)

    steps = {
        "vgg13 (no exits)": time_training_step([], args.batch_size, args.steps, args.warmup, device),
        "vgg13 (default exits)": time_training_step(None, args.batch_size, args.steps, args.warmup, device),
    }
    fractions = {
        loader: {step: timing["ms_per_batch"] / step_timing["ms_per_step"] for step, step_timing in steps.items()}
        for loader, timing in loaders.items()
    }
    result = {
        "machine": describe_machine(device),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "data": data_name,
        "batch_size": args.batch_size,
        "augmentation": "random crop (4 px zero padding) + horizontal flip + normalisation, shuffled",
        "loaders": loaders,
        "training_step": steps,
        "loader_cost_fraction_of_step": fractions,
        "speedup_device_loader_vs_best_dataloader": min(
            t["ms_per_batch"] for name, t in loaders.items() if name != "DeviceLoader"
        ) / loaders["DeviceLoader"]["ms_per_batch"],
    }
    write(result, device, args.tag)
    return result


def write(result: dict, device: torch.device, tag: str = "") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"bench_loader_{device.type}{'_' + tag if tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    machine = result["machine"]
    lines = [
        f"# Loader benchmark ({device.type})",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, torch {machine['torch']} "
        f"({machine['torch_threads']} threads)" + (f", GPU {machine['gpu']}" if "gpu" in machine else "") + ".",
        f"Load average (1 min) before/after: {result['load_average_1min']['before']:.1f} / "
        f"{result['load_average_1min']['after']:.1f} (other processes were sharing the machine when above the CPU count).",
        f"Data: {result['data']}; batch {result['batch_size']}; {result['augmentation']}.",
        "",
        "| loader | ms / batch | batches / s | " + " | ".join(f"fraction of a {s} step" for s in result["training_step"]) + " |",
        "|---|---:|---:|" + "---:|" * len(result["training_step"]),
    ]
    for name, timing in result["loaders"].items():
        fractions = result["loader_cost_fraction_of_step"][name]
        lines.append(
            f"| {name} | {timing['ms_per_batch']:.2f} | {timing['batches_per_second']:.1f} | "
            + " | ".join(f"{100 * fractions[s]:.2f}%" for s in result["training_step"]) + " |"
        )
    lines += ["", "| training step (SGD, batch %d) | ms / step |" % result["batch_size"], "|---|---:|"]
    for name, timing in result["training_step"].items():
        lines.append(f"| {name}, {timing['num_exits']} exit(s) | {timing['ms_per_step']:.1f} |")
    lines += [
        "",
        f"DeviceLoader throughput / best DataLoader+PIL throughput: {result['speedup_device_loader_vs_best_dataloader']:.2f}x. "
        "Goal (issue 2): the loader costs under 5% of a VGG-13 training step.",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
