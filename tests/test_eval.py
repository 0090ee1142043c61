"""`repro eval` on tiny runs: outputs.pt reproduces the per-exit accuracies, the skipping inference paths
agree with the sweep at the same thresholds, --timing writes its figures, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from repro import criteria, rundir, sweep
from repro.cli import app

runner = CliRunner()
# A VGG-13 at 1/8 width on a small class-balanced subset of the built-in synthetic data: seconds on a CPU.
TINY = dict(model="vgg13", dataset="synthetic", subset=300, width=0.125, batch_size=64, seed=0, precision="fp32")


def train_tiny(path: Path, method: str, epochs: int = 1) -> rundir.RunDir:
    from repro import trainer
    from repro.config import TrainConfig

    config = TrainConfig.from_recipe("report", method=method, epochs=epochs, **TINY)
    return trainer.fit(config, path).run


def untrained_run(path: Path, method: str) -> rundir.RunDir:
    """config.json + checkpoint.pt of a freshly initialised model: a run that was never trained."""
    import dataclasses

    from repro.rebuild import build_model
    from repro.config import TrainConfig

    config = TrainConfig.from_recipe("report", method=method, epochs=1, **TINY)
    # The synthetic data set's shapes, given directly (generating it takes a while on a busy CPU).
    config = dataclasses.replace(config, num_classes=10, in_channels=3, image_size=32)
    torch.manual_seed(0)
    model = build_model(config)
    run = rundir.create_run_dir(path)
    rundir.write_json(run.file(rundir.CONFIG), config.to_dict())
    rundir.save_torch(run.file(rundir.CHECKPOINT), {"model": model.state_dict(), "config": config.to_dict(), "epoch": 1, "val_loss": 0.0})
    return run


@pytest.fixture(scope="module")
def proposed_run(tmp_path_factory):
    run = train_tiny(tmp_path_factory.mktemp("runs") / "vgg13-proposed", "proposed")
    # Eval and timing in one call (8 images, batches of 4): loading the run is the slow part on a CPU.
    command = ["eval", str(run.path), "--device", "cpu", "--batch-size", "4", "--timing", "--timing-images", "8"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def loaded(proposed_run):
    """The trained run loaded once (rebuilding the synthetic data set takes a second each time)."""
    from repro.rebuild import load_run

    return load_run(proposed_run.path)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_outputs_have_the_contract_structure(proposed_run, loaded):
    outputs = torch.load(proposed_run.file(rundir.OUTPUTS), weights_only=True)
    assert set(outputs) == {"exit_macs", "checkpoint_sha256", "splits"}
    assert outputs["checkpoint_sha256"] == rundir.file_sha256(proposed_run.file(rundir.CHECKPOINT))
    num_exits = loaded.model.num_exits
    assert outputs["exit_macs"].tolist() == pytest.approx(list(loaded.model.costs.cumulative_macs))
    for name in ("val", "test"):
        split = outputs["splits"][name]
        images, labels = loaded.splits[name]
        assert set(split) == {"logits", "gates", "targets"}
        assert split["logits"].shape == (num_exits, len(labels), 10) and split["logits"].dtype == torch.float32
        assert split["gates"].shape == (num_exits - 1, len(labels))  # proposed: learned gates are stored
        assert torch.equal(split["targets"], labels)


def test_eval_json_reproduces_exit_accuracies_from_outputs(proposed_run, loaded):
    from repro.data import DeviceLoader
    from repro.methods import get_method

    summary = json.loads(proposed_run.file(rundir.EVAL).read_text())
    outputs = torch.load(proposed_run.file(rundir.OUTPUTS), weights_only=True)
    method = get_method(loaded.config.method, **loaded.config.method_options())
    for name in ("val", "test"):
        split = outputs["splits"][name]
        # Independent count from the stored logits.
        counted = [(split["logits"][b].argmax(1) == split["targets"]).sum().item() / len(split["targets"]) for b in range(10)]
        assert summary[name]["exit_accuracy"] == counted
        assert summary[name]["final_accuracy"] == counted[-1] and summary[name]["n"] == len(split["targets"])
        assert summary[name]["mean_gate"] == pytest.approx(split["gates"].double().mean(1).tolist(), rel=1e-9)
        # The stored logits are the model's, and the method accuracy is its soft output's.
        images, labels = loaded.splits[name]
        x, y = next(iter(DeviceLoader(images, labels, len(labels), "cpu", loaded.dataset.mean, loaded.dataset.std)))
        with torch.inference_mode():
            out = loaded.model(x)
        assert torch.allclose(torch.stack(out.logits), split["logits"], atol=1e-4)
        assert summary[name]["method_accuracy"] == (method.method_probs(out).argmax(1) == y).double().mean().item()
    assert summary["num_exits"] == 10 and len(summary["exit_params"]) == 10
    assert summary["plain_macs"] == loaded.model.costs.plain_macs
    # Default operating point of a gate method: gate >= 0.5, equal to the sweep at 0.5.
    point = summary["operating_point"]
    assert point["criterion"] == "gate" and point["thresholds"] == [0.5] * 9
    val = sweep.SplitOutputs(outputs["splits"]["test"]["logits"], outputs["splits"]["test"]["gates"], outputs["splits"]["test"]["targets"])
    at_half = sweep.operating_points("gate", [0.5], val, outputs["exit_macs"], summary["plain_macs"]).point(0)
    # Compared field by field: pytest.approx does not take nested structures (exit_fractions is a list).
    assert point["test"].keys() == at_half.keys()
    for key, value in at_half.items():
        assert point["test"][key] == pytest.approx(value, rel=1e-12), key


@pytest.mark.parametrize("criterion", ["gate", "entropy", "maxprob"])
def test_skipping_paths_equal_the_sweep(proposed_run, loaded, criterion):
    from repro.data import DeviceLoader
    from repro.models.inference import early_exit_batched, early_exit_single

    outputs = torch.load(proposed_run.file(rundir.OUTPUTS), weights_only=True)
    test = outputs["splits"]["test"]
    split = sweep.SplitOutputs(test["logits"], test["gates"], test["targets"])
    images, labels = loaded.splits["test"]
    x, _ = next(iter(DeviceLoader(images, labels, len(labels), "cpu", loaded.dataset.mean, loaded.dataset.std)))
    # Per exit, halfway between the two middle distinct scores: samples leave at several exits, and no
    # threshold sits on a score, where batch-size-dependent float rounding could flip a decision.
    score = criteria.scores(criterion, split.logits, split.gates).double()
    thresholds = []
    for row in score:
        distinct = torch.unique(row)
        middle = len(distinct) // 2
        thresholds.append(((distinct[middle - 1] + distinct[middle]) / 2).item())
    thresholds = torch.tensor(thresholds, dtype=torch.float64)
    points = sweep.operating_points(criterion, thresholds[None], split, outputs["exit_macs"], 1.0)
    batched = early_exit_batched(loaded.model, x, criterion, thresholds, batch_size=16)
    ref_exits, ref_predictions = criteria.select_exits(criterion, thresholds, split.logits, split.gates)
    assert torch.equal(batched.exits, ref_exits) and torch.equal(batched.predictions, ref_predictions)
    assert (batched.predictions == split.targets).double().mean().item() == points.accuracy.item()
    assert (torch.bincount(batched.exits, minlength=10).double() / len(x)).tolist() == points.exit_fractions[0].tolist()
    assert batched.macs.mean().item() == pytest.approx(points.mean_macs.item(), rel=1e-12)
    single = early_exit_single(loaded.model, x[:12], criterion, thresholds)
    assert torch.equal(single.exits, ref_exits[:12]) and torch.equal(single.predictions, ref_predictions[:12])
    assert len(set(ref_exits.tolist())) >= 2


def test_timing_writes_its_figures(proposed_run):
    timing = json.loads(proposed_run.file(rundir.TIMING).read_text())
    assert timing["device"].startswith("cpu: ") and timing["n_images"] == 8 and timing["batch_size"] == 4
    assert timing["operating_point"] == {"criterion": "gate", "thresholds": [0.5] * 9}
    assert timing["checkpoint_sha256"] == rundir.file_sha256(proposed_run.file(rundir.CHECKPOINT))
    # 8 images in batches of 4 are 2 batches: timed in 5 rounds, so that p95 is over 10 batches.
    assert timing["batch_rounds"] == 5
    for path in ("plain", "full", "early_exit"):
        stats = timing["batch1"][path]
        assert 0 < stats["median_ms"] <= stats["p95_ms"] and stats["mean_ms"] > 0
        batched = timing["batched"][path]
        assert 0 < batched["median_ms"] <= batched["p95_ms"] and batched["mean_ms"] > 0
        assert batched["ms_per_image"] == batched["mean_ms"]  # the key the report and older readers use
    speedup = timing["measured_speedup"]
    # Batch 1: the ratio of mean latencies (each image's median over the 3 repeats), each repeat's own ratio for
    # the relative spread; batched: the pooled throughput.
    assert timing["batch1_statistic"] == "mean over images of each image's median latency over the repeats"
    assert speedup["batch1"] == pytest.approx(timing["batch1"]["plain"]["mean_ms"] / timing["batch1"]["early_exit"]["mean_ms"])
    assert len(speedup["batch1_rounds"]) == 3
    assert speedup["batch1_spread"] == pytest.approx((max(speedup["batch1_rounds"]) - min(speedup["batch1_rounds"])) / speedup["batch1"])
    assert speedup["batch1_median"] == pytest.approx(timing["batch1"]["plain"]["median_ms"] / timing["batch1"]["early_exit"]["median_ms"])
    assert speedup["batched"] == pytest.approx(timing["batched"]["plain"]["ms_per_image"] / timing["batched"]["early_exit"]["ms_per_image"])
    assert len(speedup["batched_rounds"]) == 5
    # The timed early exits are those of the stored outputs at the operating point, on the sampled test images.
    from repro.timing import sample_images

    outputs = torch.load(proposed_run.file(rundir.OUTPUTS), weights_only=True)
    test = outputs["splits"]["test"]
    chosen = sample_images(len(test["targets"]), 8)
    assert timing["images"] == "a random sample of the test split (seed 0)" and len(test["targets"]) > 8
    exits, predictions = criteria.select_exits("gate", 0.5, test["logits"][:, chosen], test["gates"][:, chosen])
    assert timing["early_exit_accuracy"] == (predictions == test["targets"][chosen]).double().mean().item()
    assert timing["exit_fractions"] == (torch.bincount(exits, minlength=10).double() / 8).tolist()
    summary = json.loads(proposed_run.file(rundir.EVAL).read_text())
    expected = summary["plain_macs"] / outputs["exit_macs"].double()[exits].mean().item()
    assert timing["macs_speedup"] == pytest.approx(expected, rel=1e-9)


def test_the_report_takes_timing_sweep_and_calibration_of_the_current_checkpoint(proposed_run):
    from repro.report.collect import collect

    result = runner.invoke(app, ["sweep", str(proposed_run.path), "--thresholds", "5", "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    (record,) = collect([proposed_run.path]).runs
    assert record.missing == [] and record.timing and record.calibration and record.sweep is not None


def test_timed_images_are_a_seeded_random_sample_not_the_first_ones():
    """A test split stored class by class (the CIFAR-10 JPEG copy's first 1000 images are one class) must not
    be timed by its first images: the sample spans the classes, is the same on every call, and sorted."""
    from repro.timing import sample_images

    labels = torch.arange(10).repeat_interleave(1000)  # 10 classes of 1000, stored class by class
    chosen = sample_images(len(labels), 1000)
    counts = torch.bincount(labels[chosen], minlength=10)
    assert len(chosen) == len(set(chosen.tolist())) == 1000 and counts.min() >= 70 and counts.max() <= 130
    assert torch.equal(chosen, sample_images(len(labels), 1000)) and torch.equal(chosen, chosen.sort().values)
    assert torch.equal(sample_images(5, 8), torch.arange(5))  # fewer images than asked: all of them


def test_batched_stats_are_per_image_over_batches():
    from repro.timing import batched_stats

    # Batches of 4, 4 and 2 images taking 8, 12 and 6 ms: 2, 3 and 3 ms per image; 26 ms for 10 images.
    stats = batched_stats([8.0, 12.0, 6.0], [4, 4, 2])
    assert stats == {"ms_per_image": 2.6, "mean_ms": 2.6, "median_ms": 3.0, "p95_ms": 3.0}


def test_batch1_latency_is_the_mean_over_images_of_each_images_median_over_repeats(monkeypatch):
    """With a scripted clock: two of three images leave early (1 ms), one runs long (7 ms); the plain network
    takes 4 ms, once 40 ms (a busy machine). The batch-1 speed-up is the ratio of mean latencies, 4 / 3,
    which MACs predict; the median image's (4 / 1) is not the average cost; the outlier call is dropped."""
    from repro import timing
    from repro.models import inference
    from repro.models.inference import EarlyExitResult

    clock = {"now": 0.0, "calls": {}}

    def spend(path: str, batch: torch.Tensor, ms_of) -> None:
        image = int(batch[0, 0, 0, 0].item())
        call = clock["calls"][path, image] = clock["calls"].get((path, image), -1) + 1
        clock["now"] += (ms_of(image, call) if len(batch) == 1 else 1.0) / 1000

    warmup = timing.WARMUP_IMAGES  # warm-up calls: image 0, 1, 2 once each (3 images), untimed
    plain_ms = lambda image, call: 40.0 if (image, call) == (0, 1 + 1) else 4.0  # image 0's second timed call
    early_ms = lambda image, call: 7.0 if image == 2 else 1.0

    def early(model, batch, criterion, thresholds):
        spend("early", batch, early_ms)
        n = len(batch)
        return EarlyExitResult(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.full((n,), 5.0, dtype=torch.float64))

    monkeypatch.setattr(inference, "run_plain", lambda model, batch: spend("plain", batch, plain_ms))
    monkeypatch.setattr(inference, "run_every_exit", lambda model, batch: spend("full", batch, lambda i, c: 6.0))
    monkeypatch.setattr(inference, "early_exit_single", early)
    monkeypatch.setattr(inference, "early_exit_batched", lambda model, batch, criterion, thresholds: early(model, batch, criterion, thresholds))
    def stream(model, batch, criterion, thresholds, batch_size):  # 2 ms a pass: its own 1 ms and early's
        spend("stream", batch, None)
        predictions, exits, macs = early(model, batch, criterion, thresholds)
        return inference.StreamResult(predictions, exits, macs, torch.tensor([0, 0, 2]))

    monkeypatch.setattr(inference, "early_exit_stream", stream)
    monkeypatch.setattr(timing, "wall_clock", lambda device: lambda: clock["now"])
    x = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    class TwoExits(torch.nn.Module):
        num_exits = 2

    result = timing.measure(TwoExits(), x, torch.zeros(3, dtype=torch.long), "entropy", [0.5], plain_macs=10.0,
                            batch_size=3, repeats=3)
    assert warmup >= 3
    assert result["batch1"]["early_exit"] == {"mean_ms": pytest.approx(3.0), "median_ms": pytest.approx(1.0), "p95_ms": pytest.approx(7.0)}
    assert result["batch1"]["plain"] == {"mean_ms": pytest.approx(4.0), "median_ms": pytest.approx(4.0), "p95_ms": pytest.approx(4.0)}
    speedup = result["measured_speedup"]
    assert speedup["batch1"] == pytest.approx(4 / 3) and speedup["batch1_median"] == pytest.approx(4.0)
    # Each repeat's own ratio of means: the outlier shows in its repeat's figure, hence in the spread only.
    assert speedup["batch1_rounds"] == pytest.approx([4 / 3, 16 / 3, 4 / 3])
    assert speedup["batch1_spread"] == pytest.approx((16 / 3 - 4 / 3) / (4 / 3))
    assert result["macs_speedup"] == pytest.approx(2.0) and result["measured_over_predicted"]["batch1"] == pytest.approx(2 / 3)
    # The stream: the 3 images repeated STREAM_MAX_COPIES times (15 images, 5 batches); each of the 3 repeats
    # times 5 plain batches (1 ms each) beside one stream pass (2 ms: its own 1 ms and early's 1 ms).
    stream = result["stream"]
    assert timing.STREAM_MAX_COPIES == 5 and stream["images"] == 15 and stream["input_batches"] == 5
    assert stream["speedup"] == pytest.approx(2.5) and stream["rounds"] == pytest.approx([2.5] * 3)
    assert stream["ms_per_image"] == pytest.approx(2 / 15) and stream["over_predicted"] == pytest.approx(1.25)
    assert stream["waited_batches"] == {"mean": pytest.approx(2 / 3), "p95": 2, "max": 2, "share_delayed": pytest.approx(1 / 3),
                                        "mean_delayed": 2.0}


def test_entropy_method_and_baseline_operating_points(tmp_path):
    bnet = untrained_run(tmp_path / "bnet", "bnet")
    assert invoke("eval", bnet.path, "--device", "cpu").exit_code == 0
    summary = json.loads(bnet.file(rundir.EVAL).read_text())
    point = summary["operating_point"]
    assert point["criterion"] == "entropy" and point["how"] == "calibrated on val, max drop 1.0 points"
    assert len(point["thresholds"]) == 9 and point["val"]["accuracy"] >= summary["val"]["final_accuracy"] - 0.01 - 1e-12
    assert torch.load(bnet.file(rundir.OUTPUTS), weights_only=True)["splits"]["val"]["gates"] is None

    baseline = untrained_run(tmp_path / "baseline", "baseline")
    result = invoke("eval", baseline.path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads(baseline.file(rundir.EVAL).read_text())
    point = summary["operating_point"]
    assert summary["num_exits"] == 1 and point["criterion"] is None and point["thresholds"] == []
    assert point["test"]["exit_fractions"] == [1.0] and point["test"]["accuracy"] == summary["test"]["final_accuracy"]
    assert point["test"]["macs_speedup"] == summary["plain_macs"] / summary["exit_macs"][0]
    assert summary["test"]["mean_gate"] is None


def test_bad_input(tmp_path, proposed_run):
    # No checkpoint: train it first, with the command.
    bare = tmp_path / "bare"
    bare.mkdir()
    rundir.write_json(bare / rundir.CONFIG, {"model": "vgg13"})
    result = invoke("eval", bare)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "has no checkpoint.pt; train it with" in text and "repro train" in text and "Traceback" not in text
    result = invoke("eval", tmp_path / "missing")
    assert result.exit_code == 1 and "does not exist" in result.output
    result = invoke("eval", proposed_run.path, "--device", "tpu")
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.output
    # --timing after the checkpoint changed: eval.json is stale, refuse with the command to recompute.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (rundir.CONFIG, rundir.CHECKPOINT, rundir.EVAL, rundir.OUTPUTS):
        (copy / name).write_bytes(proposed_run.file(name).read_bytes())
    checkpoint = torch.load(copy / rundir.CHECKPOINT, weights_only=True)
    checkpoint["epoch"] = 2
    rundir.save_torch(copy / rundir.CHECKPOINT, checkpoint)
    from repro.steps import time_run

    with pytest.raises(Exception, match=f"recompute it with `repro eval {copy}`"):
        time_run(rundir.RunDir(copy), n_images=2)
    result = invoke("sweep", copy)
    assert result.exit_code == 1 and "another checkpoint" in result.output


@pytest.mark.parametrize("count, rank", [(20, 19), (60, 57), (100, 95), (1, 1), (3, 3)])
def test_p95_is_the_nearest_rank_numpy_calls_inverted_cdf(count, rank):
    import numpy as np

    from repro.timing import latency_stats, nearest_rank

    assert nearest_rank(count, 95) == rank - 1  # 0-based index of rank ceil(0.95 * count)
    values = [float(v) for v in np.random.default_rng(count).permutation(count) + 1]  # 1..count shuffled
    assert latency_stats(values)["p95_ms"] == np.percentile(values, 95, method="inverted_cdf") == rank
