"""Where does batched early exit spend its time? A step-by-step profile of `early_exit_batched` (issue 28).

Each batch goes through the same steps `repro.models.inference.early_exit_batched` takes, timed one by one
(wall clock, after a warm-up): for every exit b, its backbone segment, its head (branch features and
classifier), the decision (the criterion's score and firing rule), and the compaction (gathering the
samples that stay and the bookkeeping of those that left); then the last segment and the final classifier.
The profile's exits and predictions are checked against `early_exit_batched` on the same batches, so it
times the path it claims to; the plain network is timed beside it, and the MAC prediction of every part.

The network: a trained run (`--from-run RUN`: its checkpoint.pt, test images from its data, and its
calibrated thresholds from eval.json), or, without one, the untrained VGG-13 of --width with per-exit
entropy thresholds set so that the given exit fractions leave (`--fractions`, default: the committed
bnet's at its calibrated point): the shapes, and so the time, of a batch that leaves like a trained one.

    python benchmarks/profile_early_exit.py --from-run runs/retrained-cpu/bnet-cifar10-jpeg
    python benchmarks/profile_early_exit.py --width 0.5 --batch-size 256 [--whole-batches]

Writes benchmarks/results/profile_early_exit_<device>_<name>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# results/cpu/bnet-cifar10-jpeg's test exit fractions at its calibrated entropy threshold (eval.json).
BNET_FRACTIONS = (0.7083, 0.0561, 0.0433, 0.0258, 0.0304, 0.0256, 0.0214, 0.015, 0.0055, 0.0686)


def fraction_thresholds(model, x: torch.Tensor, fractions) -> torch.Tensor:
    """Per-exit entropy thresholds under which `fractions` of x leave at each early exit (an untrained
    network: its entropies are all near 1, but distinct, so quantiles of the samples still in place them)."""
    from repro.criteria import normalised_entropy

    with torch.inference_mode():
        out = model(x)
    scores = torch.stack([normalised_entropy(logits) for logits in out.logits[:-1]])  # [E-1, N] float64
    active = torch.ones(len(x), dtype=torch.bool)
    thresholds = []
    for b, fraction in enumerate(fractions[:-1]):
        count = round(fraction * len(x))
        remaining = scores[b][active]
        if count == 0 or len(remaining) == 0:
            thresholds.append(0.0)  # nothing leaves here (an untrained network is never one-hot)
            continue
        value = remaining.sort().values[min(count, len(remaining)) - 1].item()
        thresholds.append(value)
        active &= ~(scores[b] <= value)
    return torch.tensor(thresholds, dtype=torch.float64)


def profile_batch(model, x: torch.Tensor, criterion: str, values: list[float], now) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """early_exit_batched's steps on one batch (its pieces, and one decision over them, included), each timed: ({step name: s}, exits, predictions)."""
    from repro.criteria import fires, scores
    from repro.models.inference import _exit_outputs, _pieces, gather_survivors, in_layout, piece_sizes

    timings = {}

    def timed(step: str, start: float) -> None:
        timings[step] = timings.get(step, 0.0) + now() - start

    last = model.num_exits - 1
    start = now()
    predictions = torch.empty(len(x), dtype=torch.long, device=x.device)
    exits = torch.full((len(x),), last, dtype=torch.long, device=x.device)
    h = in_layout(x)
    active = torch.arange(len(h), device=x.device)
    sizes = piece_sizes(model, x.device)
    timed("setup", start)
    for b in range(last):
        pieces = _pieces(len(h), sizes[b])
        outs, logits, gates = [], [], []
        for piece in pieces:
            start = now()
            out = model.run_segment(b, h[piece])
            timed(f"segment {b}", start)
            start = now()
            piece_logits, gate = _exit_outputs(model.branches[b], out, criterion)
            outs.append(out)
            logits.append(piece_logits)
            gates.append(gate)
            timed(f"head {b}", start)
        start = now()
        if len(pieces) == 1:
            logits, gates = logits[0], gates[0]
        else:
            logits, gates = torch.cat(logits), (torch.cat(gates) if criterion == "gate" else None)
        fired = fires(criterion, scores(criterion, logits, gates), values[b])
        any_fired = bool(fired.any())
        timed(f"decision {b}", start)
        start = now()
        if not any_fired:
            h = outs[0] if len(outs) == 1 else torch.cat(outs)
        else:
            left = active[fired]
            exits[left] = b
            predictions[left] = logits[fired].argmax(dim=-1)
            stay = ~fired
            h = gather_survivors(outs, pieces, stay)
            active = active[stay]
        timed(f"compaction {b}", start)
        if h is None:
            break
    else:
        start = now()
        outputs = [model.run_segment(last, h[piece]) for piece in _pieces(len(h), piece_sizes(model, x.device, heads=False)[last])]
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        timed(f"segment {last}", start)
        start = now()
        predictions[active] = model.classifier(out).argmax(dim=-1)
        timed("classifier", start)
    return timings, exits, predictions


def predicted_steps(costs, fractions: list[float], plain_ms: float) -> dict:
    """Each segment's and head's ms per image if it ran at the plain network's ms per MAC: its MACs per
    sample x the share of the images that reach it (decisions and compaction have no MACs to predict from;
    the last segment's prediction includes the final classifier, which the profile times apart). The call's
    own bookkeeping (validation, the result's tensors) is in neither: `profiled_wall` - the steps' sum."""
    rate, reached, predicted = plain_ms / costs.plain_macs, 1.0, {}
    backbone = [0.0, *costs.backbone_macs]
    last = len(costs.cumulative_macs) - 1
    for b in range(last + 1):
        segment = backbone[b + 1] - backbone[b]  # the final exit's entry includes the classifier
        predicted[f"segment {b}"] = segment * reached * rate
        if b < last:
            predicted[f"head {b}"] = costs.head_macs[b] * reached * rate
            reached -= fractions[b]
    return predicted


def full_batch_steps(model, x: torch.Tensor, criterion: str, rounds: int, now) -> dict:
    """Each segment and exit head (pieces as early_exit_batched cuts them) and the final classifier timed on
    the whole batch x, every sample reaching it: {step: ms per image}. Weighted by the fraction of images that
    reach each step, they give what early exit would cost with every step at full-batch efficiency and no
    decisions or compaction: the part of the gap to the MAC prediction that no scheduling can close."""
    from repro.models.inference import _exit_outputs, _pieces, in_layout, piece_sizes

    last = model.num_exits - 1
    sizes = [*piece_sizes(model, x.device)[:last], piece_sizes(model, x.device, heads=False)[last]]  # as early exit cuts them
    steps, h = {}, in_layout(x)

    def time_ms(step: str, fn) -> torch.Tensor:
        result = fn()  # warm-up, and the input of the next step
        start = now()
        for _ in range(rounds):
            fn()
        steps[step] = 1000 * (now() - start) / rounds / len(x)
        return result

    for b in range(last + 1):
        source = h
        pieces = _pieces(len(source), sizes[b])
        outs = time_ms(f"segment {b}", lambda: [model.run_segment(b, source[piece]) for piece in pieces])
        h = outs[0] if len(outs) == 1 else torch.cat(outs)
        if b < last:
            time_ms(f"head {b}", lambda: [_exit_outputs(model.branches[b], out, criterion) for out in outs])
    time_ms("classifier", lambda: model.classifier(h))
    return steps


def full_batch_ideal(steps: dict, fractions: list[float]) -> float:
    """ms per image of early exit at full-batch efficiency: each step's full-batch time x the share reaching it."""
    reached, total = 1.0, 0.0
    for b in range(len(fractions)):
        total += reached * (steps[f"segment {b}"] + steps.get(f"head {b}", steps["classifier"]))
        reached -= fractions[b]
    return total


def main(args) -> dict:
    from repro import artifacts, rundir
    from repro.criteria import check_thresholds
    from repro.models import create_model
    from repro.models.inference import early_exit_batched, run_plain
    from repro.timing import sample_images, wall_clock

    from repro.models import inference

    if args.whole_batches:  # the path before issue 28: every segment on the whole batch
        inference.PIECE_BYTES = 2**62
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.from_run:  # the model and images exactly as `repro eval --timing` loads them (repro.steps._time_run)
        from repro.data import DeviceLoader
        from repro.rebuild import load_run

        run = rundir.open_run(Path(args.from_run))
        loaded = load_run(run.path, device=str(device))
        model = loaded.model
        images, labels = loaded.splits["test"]
        chosen = sample_images(len(labels), args.images)
        x, _ = next(iter(DeviceLoader(images[chosen], labels[chosen], len(chosen), str(device), loaded.dataset.mean,
                                      loaded.dataset.std)))
        point = artifacts.read_eval(run)["operating_point"]
        criterion, thresholds = point["criterion"], torch.tensor(point["thresholds"], dtype=torch.float64)
        name, source = run.name, str(run.path)
    else:
        model = create_model("vgg13", num_classes=10, width=args.width, batch_norm=False, classifier="report").to(device)
        model.eval()
        x = torch.randn(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
        criterion, thresholds = "entropy", fraction_thresholds(model, x, args.fractions)
        name, source = f"untrained-vgg13-w{args.width:g}", f"untrained, fractions {list(args.fractions)}"
    model.eval()
    values = check_thresholds(thresholds, model.num_exits - 1).tolist()
    now = wall_clock(device)
    batches = [x[s : s + args.batch_size] for s in range(0, len(x), args.batch_size)]

    # Checked first: the profile's steps are early_exit_batched's (the same exits and predictions), in
    # inference mode as timed (MaxPool2x2 takes another path with autograd on).
    for batch in batches:
        with torch.inference_mode():
            _, exits, predictions = profile_batch(model, batch, criterion, values, now)
        reference = early_exit_batched(model, batch, criterion, thresholds)
        assert torch.equal(exits.cpu(), reference.exits) and torch.equal(predictions.cpu(), reference.predictions)

    steps, totals = {}, {"early_exit": [], "plain": [], "profiled": []}
    with torch.inference_mode():
        for path in (lambda b: early_exit_batched(model, b, criterion, thresholds), lambda b: run_plain(model, b)):
            path(batches[0])  # warm-up
        for _ in range(args.rounds):
            for batch in batches:
                start = now()
                early_exit_batched(model, batch, criterion, thresholds)
                totals["early_exit"].append(now() - start)
                start = now()
                run_plain(model, batch)
                totals["plain"].append(now() - start)
                start = now()
                timings, _, _ = profile_batch(model, batch, criterion, values, now)
                totals["profiled"].append(now() - start)
                for step, seconds in timings.items():
                    steps.setdefault(step, []).append(seconds)
    images = len(x) * args.rounds
    per_image_ms = {step: 1000 * sum(seconds) / images for step, seconds in steps.items()}
    total_ms = {path: 1000 * sum(seconds) / images for path, seconds in totals.items()}
    reference = early_exit_batched(model, x, criterion, thresholds, batch_size=args.batch_size)
    fractions = (torch.bincount(reference.exits, minlength=model.num_exits).double() / len(x)).tolist()
    macs = model.costs
    result = {
        "benchmark": "step-by-step profile of batched early exit (issue 28)",
        "source": source, "device": f"{device.type}: {torch.get_num_threads()} threads", "batch_size": args.batch_size,
        "images": len(x), "rounds": args.rounds, "criterion": criterion, "exit_fractions": fractions,
        "ms_per_image": {"early_exit": total_ms["early_exit"], "plain": total_ms["plain"],
                         "profiled_steps_sum": sum(per_image_ms.values()), "profiled_wall": total_ms["profiled"]},
        "measured_speedup": total_ms["plain"] / total_ms["early_exit"],
        "macs_speedup": macs.plain_macs / reference.macs.mean().item(),
        "steps_ms_per_image": per_image_ms,
        "median_batch_ms": {step: 1000 * statistics.median(seconds) for step, seconds in steps.items()},
        "torch": torch.__version__,
        "pieces": "whole batches" if args.whole_batches else f"pieces of at most {inference.PIECE_BYTES} bytes per activation",
    }
    result["measured_over_predicted"] = result["measured_speedup"] / result["macs_speedup"]
    result["steps_predicted_ms_per_image"] = predicted_steps(macs, fractions, total_ms["plain"])
    with torch.inference_mode():
        full = full_batch_steps(model, batches[0], criterion, args.rounds, now)
    ideal = full_batch_ideal(full, fractions)
    result["steps_full_batch_ms_per_image"] = full
    result["full_batch_ideal"] = {"ms_per_image": ideal, "speedup": total_ms["plain"] / ideal,
                                  "over_macs": total_ms["plain"] / ideal / result["macs_speedup"],
                                  "measured_over_ideal": ideal / total_ms["early_exit"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile_early_exit_{device.type}_{name}_b{args.batch_size}{'_whole-batches' if args.whole_batches else ''}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    report(result)
    print(f"wrote {out}")
    return result


def report(result: dict) -> None:
    total = result["ms_per_image"]["profiled_steps_sum"]
    print(f"{result['source']}  batch {result['batch_size']}  exits {[round(f, 3) for f in result['exit_fractions']]}")
    print(f"plain {result['ms_per_image']['plain']:.4f} ms/image, early exit {result['ms_per_image']['early_exit']:.4f} "
          f"(measured {result['measured_speedup']:.2f}x, MACs {result['macs_speedup']:.2f}x, "
          f"ratio {result['measured_over_predicted']:.2f})")
    kinds = {}
    for step, ms in result["steps_ms_per_image"].items():
        kinds[step.split()[0]] = kinds.get(step.split()[0], 0.0) + ms
    for kind, ms in sorted(kinds.items(), key=lambda item: -item[1]):
        print(f"  {kind:<12} {ms:8.4f} ms/image  {100 * ms / total:5.1f}%")
    ideal = result["full_batch_ideal"]
    print(f"  every step at full-batch efficiency, no decisions or compaction: {ideal['ms_per_image']:.4f} ms/image, "
          f"{ideal['speedup']:.2f}x ({ideal['over_macs']:.2f} of the MAC prediction); measured reaches "
          f"{ideal['measured_over_ideal']:.2f} of it")
    predicted = result["steps_predicted_ms_per_image"]
    print(f"    {'step':<14} {'ms/image':>8}  {'at plain rate':>13}")
    for step, ms in result["steps_ms_per_image"].items():
        expected = predicted.get(step)
        print(f"    {step:<14} {ms:8.4f}  " + (f"{expected:13.4f}  {ms / expected:5.2f}x" if expected else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from-run", help="a trained run directory with checkpoint.pt and eval.json")
    parser.add_argument("--width", type=float, default=0.5, help="untrained VGG-13's width (without --from-run)")
    parser.add_argument("--fractions", type=float, nargs="+", default=BNET_FRACTIONS,
                        help="exit fractions to emulate on the untrained network (one per exit, the final one last)")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--whole-batches", action="store_true", help="profile the path without pieces (before issue 28)")
    main(parser.parse_args())
