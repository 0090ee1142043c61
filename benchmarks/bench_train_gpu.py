"""GPU training wall time: 30 epochs of VGG-13 (modern recipe) on the CIFAR-10 JPEG copy, our loop vs a plain one.

Goal (issue 4): on an H100, <= 60 s for 30 epochs, and >= 5x faster than a plain DataLoader + PIL + fp32
loop training the same model, measured side by side in one run.

- repro: `repro.trainer.fit` with the modern recipe: the whole split as uint8 on the GPU, crop + flip
  done there in batches (repro.data.DeviceLoader), bf16 autocast, channels_last, fused SGD, a
  validation pass every epoch; `--compile` adds torch.compile. Its wall time is everything `fit` does
  (every epoch, every validation pass, every checkpoint write), after the data set is decoded once
  (timed separately: the decoded tensors are cached, so later runs skip it).
- plain: the textbook loop. A torch Dataset opening each JPEG with PIL every epoch, pad-4 random crop and
  flip in PIL, ToTensor + normalise by hand, a DataLoader with worker processes and pinned memory,
  fp32, default memory format, non-fused SGD with the same schedule, no validation. It trains on as
  many images per epoch as repro's training split. It runs `--plain-epochs` epochs (default 3); its
  30-epoch time is that per-epoch time (the mean of all but the first epoch) times 30, and is labelled
  "extrapolated" unless `--plain-epochs 30`.

Test accuracy of every exit of repro's run is reported (the JPEG copy's test split; label the numbers
"CIFAR-10 (JPEG copy)"). No torchvision: it is not needed, and not importable everywhere.

    python benchmarks/bench_train_gpu.py                       # on a GPU machine
    python benchmarks/bench_train_gpu.py --device cpu --epochs 1 --plain-epochs 1 --subset 1000 --width 0.125
                                                               # a quick correctness check anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repro.rebuild import load_data
from repro.config import RECIPES, TrainConfig
from repro.environment import describe_device, select_device
from repro.methods import get_method
from repro.models import create_model
from repro.trainer import Accelerator, evaluate, fit, learning_rate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
RESULTS = ROOT / "benchmarks" / "results" / "bench_train_gpu.json"


def run_repro(args, device: torch.device, workdir: Path) -> dict:
    config = TrainConfig.from_recipe(
        "modern", model="vgg13", method=args.method, dataset="imagefolder", data_dir=str(args.data),
        subset=args.subset, epochs=args.epochs, width=args.width, seed=args.seed,
        warmup_epochs=min(RECIPES["modern"]["warmup_epochs"], args.epochs),
    )
    start = time.perf_counter()
    dataset, splits = load_data(config)  # decodes the JPEGs once (then cached) so fit below is not charged for it
    decode_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fit(config, workdir / "repro-run", device=device, compile=args.compile)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    from repro.rebuild import load_run
    from repro.data import DeviceLoader

    loaded = load_run(result.run.path, device)
    test = DeviceLoader(*loaded.splits["test"], 1024, device, loaded.dataset.mean, loaded.dataset.std)
    method = get_method(loaded.config.method, **loaded.config.method_options())
    stats = evaluate(loaded.model, method, test, loaded.model.costs.relative().to(device), Accelerator.for_device(device))
    train_images = len(splits["train"][1])
    return {
        "config": result.config.to_dict(),
        "decode_seconds_first_load": decode_seconds,
        "wall_seconds": seconds,
        "epochs": len(result.rows),
        "train_images_per_epoch": train_images,
        "epoch_seconds": [row["seconds"] for row in result.rows],
        "images_per_second_median": float(np.median([row["images_per_second"] for row in result.rows])),
        "test_accuracy_per_exit": [stats[f"acc_exit{b}"] for b in range(loaded.model.num_exits)],
        "test_accuracy_method": stats["acc_method"],
        "test_images": len(loaded.splits["test"][1]),
    }


class JpegFolder(torch.utils.data.Dataset):
    """The plain way: one JPEG opened with PIL per item, augmented in PIL, normalised in torch."""

    def __init__(self, files: list[tuple[Path, int]], mean, std, augment: bool):
        self.files, self.augment = files, augment
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        from PIL import Image, ImageOps

        path, label = self.files[index]
        image = Image.open(path).convert("RGB")
        if self.augment:
            padded = ImageOps.expand(image, border=4, fill=0)
            top, left = random.randint(0, 8), random.randint(0, 8)
            image = padded.crop((left, top, left + 32, top + 32))
            if random.random() < 0.5:
                image = ImageOps.mirror(image)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, label


def jpeg_files(root: Path, count: int) -> list[tuple[Path, int]]:
    """`count` training JPEGs, class-balanced (the first of each class by file name)."""
    train = next(root.rglob("train"))
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    per_class = -(-count // len(classes))
    files = []
    for label, name in enumerate(classes):
        files += [(path, label) for path in sorted((train / name).glob("*.jpg"))[:per_class]]
    return files[:count]


def run_plain(args, device: torch.device, workdir: Path, train_images: int, mean, std) -> dict:
    folder = workdir / "extracted"
    with tarfile.open(args.data) as archive:
        try:
            archive.extractall(folder, filter="data")
        except TypeError:  # Python without tarfile extraction filters (< 3.11.4)
            archive.extractall(folder)
    files = jpeg_files(folder, train_images)
    workers = min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        JpegFolder(files, mean, std, augment=True), batch_size=256, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=False,
    )
    config = TrainConfig.from_recipe("modern", model="vgg13", method="baseline", epochs=30, width=args.width)
    torch.manual_seed(args.seed)
    model = create_model("vgg13", 10, 3, 32, exits=[], batch_norm=True, classifier="linear", width=args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    total_steps = len(loader) * config.epochs
    epoch_seconds, step = [], 0
    for _ in range(args.plain_epochs):
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x, y in loader:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, total_steps, len(loader))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x).logits[-1], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - start)
    steady = epoch_seconds[1:] or epoch_seconds
    per_epoch = sum(steady) / len(steady)
    return {
        "epochs_run": args.plain_epochs,
        "train_images_per_epoch": len(files),
        "dataloader_workers": workers,
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch_steady": per_epoch,
        "wall_seconds_30_epochs": sum(epoch_seconds) if args.plain_epochs >= 30 else per_epoch * 30,
        "extrapolated": args.plain_epochs < 30,
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cifar10-jpeg.tar.gz")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--method", default="baseline", help="repro's method (the plain loop always trains the baseline)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--plain-epochs", type=int, default=3, help="epochs of the plain loop (30 = no extrapolation)")
    parser.add_argument("--subset", type=int, default=None, help="fewer training images (for a quick check)")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found: the CIFAR-10 JPEG tarball (see ../shared/data/README.md)")
    device = select_device(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="bench_train_gpu."))
    try:
        ours = run_repro(args, device, workdir)
        print(f"repro: {ours['epochs']} epochs in {ours['wall_seconds']:.1f} s "
              f"({ours['images_per_second_median']:,.0f} img/s); test accuracy final exit "
              f"{ours['test_accuracy_per_exit'][-1]:.4f}, method {ours['test_accuracy_method']:.4f}", flush=True)
        result = {"device": describe_device(device), "torch": torch.__version__, "compile": args.compile, "repro": ours}
        if not args.skip_plain:
            dataset_mean_std = _mean_std(args)
            plain = run_plain(args, device, workdir, ours["train_images_per_epoch"], *dataset_mean_std)
            result["plain"] = plain
            scale = args.epochs / 30
            result["speedup_vs_plain"] = plain["wall_seconds_30_epochs"] * scale / ours["wall_seconds"]
            print(f"plain: {plain['seconds_per_epoch_steady']:.1f} s/epoch -> {plain['wall_seconds_30_epochs']:.0f} s for 30 epochs"
                  f"{' (extrapolated)' if plain['extrapolated'] else ''}; speed-up x{result['speedup_vs_plain']:.1f}", flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _mean_std(args):
    config = TrainConfig.from_recipe("modern", dataset="imagefolder", data_dir=str(args.data))
    dataset, _ = load_data(config)
    return dataset.mean, dataset.std


if __name__ == "__main__":
    main()
