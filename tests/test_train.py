"""The training layer: config and recipes, the learning-rate schedule, gradients under `proposed`, every
method training on real Fashion-MNIST images, and resume (even after kill -9) equal to an uninterrupted run.

Real data: the Fashion-MNIST idx files Debian installs in /usr/share/datasets/fashion-mnist (skipped when
absent). Models are VGG-13 at 1/8 width (8..64 channels) so each run takes seconds on 2 CPU cores.
"""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro import rundir
from repro.rebuild import build_model, load_run
from repro.config import RECIPES, TrainConfig
from repro.data import DeviceLoader
from repro.errors import ReproError, UnknownNameError
from repro.methods import get_method, list_methods
from repro.trainer import epoch_seed, fit, learning_rate, validate

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data folder for the module, so Fashion-MNIST is decoded once and then read from the cache."""
    return tmp_path_factory.mktemp("data")


def tiny(data_dir, **overrides) -> TrainConfig:
    """A VGG-13 at 1/8 width on 400 Fashion-MNIST images (320 train, 80 val, 80 test)."""
    options = dict(dataset="fashion-mnist", data_dir=str(data_dir), subset=400, epochs=3, batch_size=32, lr=1e-3,
                   width=0.125, batch_norm=True, classifier="linear", precision="fp32")
    options.update(overrides)
    return TrainConfig.from_recipe(options.pop("recipe", "report"), **options)


# ---------------------------------------------------------------------------------------------- config


def test_report_recipe_is_the_reports_setup():
    config = TrainConfig.from_recipe("report", method="bnet")
    assert (config.optimizer, config.lr, config.batch_size, config.epochs, config.patience) == ("adam", 5e-4, 128, 30, 5)
    assert (config.batch_norm, config.augment, config.classifier, config.dropout) == (False, False, "report", True)
    assert config.select_best and config.schedule == "constant"


def test_modern_recipe_and_overrides():
    config = TrainConfig.from_recipe("modern", method="proposed", lr=0.05, batch_size=512)
    assert (config.optimizer, config.nesterov, config.momentum, config.weight_decay) == ("sgd", True, 0.9, 5e-4)
    assert (config.batch_norm, config.augment, config.classifier, config.schedule) == (True, True, "linear", "warmup-linear")
    assert (config.lr, config.batch_size, config.patience, config.select_best) == (0.05, 512, 0, False)
    assert set(RECIPES) == {"report", "modern"}


def test_method_options_resolve_per_method():
    assert TrainConfig.from_recipe(method="proposed").cost_weight == 0.1
    assert TrainConfig.from_recipe(method="proposed").joint_weight == 1.0  # the learned-gates fix, not the literal 0
    rp = TrainConfig.from_recipe(method="report-proposed")
    assert (rp.joint_weight, rp.mix, rp.detach_confidence, rp.cost_weight) == (1.0, "probs", False, None)
    bnet = TrainConfig.from_recipe(method="bnet", alphas=[1, 2])
    assert (bnet.alphas, bnet.cost_weight, bnet.mix) == ([1, 2], None, None)
    assert TrainConfig.from_recipe(method="baseline").exits == []


def test_config_round_trips_and_rejects_unknown_fields():
    config = TrainConfig.from_recipe("modern", method="report-maxprob", exits=[0, 4], seed=3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ReproError, match="unknown field"):
        TrainConfig.from_dict({**config.to_dict(), "learning_rate": 1})


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"lr": -1.0}, "--lr must be positive"),
    ({"val_fraction": 1.5}, "--val-fraction"),
    ({"method": "bnet", "cost_weight": 1.0}, "--cost-weight does not apply to method 'bnet'"),
    ({"method": "baseline", "exits": [0, 1]}, "baseline trains the network without exits"),
    ({"method": "bnet", "alphas": [0, 0]}, "not all 0"),
    ({"exits": [1, 1]}, "duplicate"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ReproError, match=message):
        TrainConfig.from_recipe("report", **overrides)


def test_unknown_names_are_usage_errors():
    for field, value in [("model", "vgg99"), ("method", "nope"), ("dataset", "imagenet")]:
        with pytest.raises(UnknownNameError):
            TrainConfig.from_recipe("report", **{field: value})
    with pytest.raises(UnknownNameError):
        TrainConfig.from_recipe("ancient")


def test_build_model_checks_alphas_against_the_exit_count():
    config = TrainConfig.from_recipe(method="bnet", alphas=[1, 1, 1], exits=[0, 4], width=0.125).with_dataset(
        type("D", (), {"num_classes": 10, "channels": 1, "image_size": 28})())
    assert build_model(config).num_exits == 3
    with pytest.raises(ReproError, match="2 weights but vgg13 has 3 exits"):
        build_model(TrainConfig.from_recipe(method="bnet", alphas=[1, 1], exits=[0, 4], width=0.125).with_dataset(
            type("D", (), {"num_classes": 10, "channels": 1, "image_size": 28})()))


# ---------------------------------------------------------------------------------------------- schedule


def test_learning_rate_schedules_by_hand():
    config = TrainConfig.from_recipe("modern", lr=0.1, epochs=10, warmup_epochs=2)
    # 10 steps per epoch: 20 warm-up steps, then 80 steps of decay to 0.
    assert learning_rate(config, 0, 100, 10) == pytest.approx(0.1 / 20)
    assert learning_rate(config, 19, 100, 10) == pytest.approx(0.1)
    assert learning_rate(config, 20, 100, 10) == pytest.approx(0.1)
    assert learning_rate(config, 60, 100, 10) == pytest.approx(0.05)
    assert learning_rate(config, 99, 100, 10) == pytest.approx(0.1 / 80)
    cosine = TrainConfig.from_recipe("modern", lr=0.1, epochs=10, warmup_epochs=2, schedule="warmup-cosine")
    assert learning_rate(cosine, 60, 100, 10) == pytest.approx(0.05)  # half-way: cos(pi/2) = 0
    assert learning_rate(cosine, 40, 100, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(TrainConfig.from_recipe(), 77, 100, 10) == 5e-4
    assert epoch_seed(0, 0) != epoch_seed(0, 1) != epoch_seed(1, 0)


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("head", ["conv", "pool"])
def test_gradients_reach_every_exit_and_every_gate_under_proposed(head):
    """The reproduction report found its exits untrained: every branch and gate must get a gradient."""
    from repro.models import create_model

    torch.manual_seed(0)
    model = create_model("vgg13", 10, 3, 32, width=0.125, head=head)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    loss, _ = get_method("proposed").loss(model(x), y, model.costs.relative())
    loss.backward()
    assert model.num_exits == 10
    for b, branch in enumerate(model.branches):
        for part in ("features", "classify", "gate"):
            grads = [p.grad for p in getattr(branch, part).parameters()]
            if part == "features" and head == "pool":
                assert grads == []  # the pooled head has no weights of its own
                continue
            assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), f"exit {b} {part} got no gradient"
    for index, stage in enumerate(model.stages):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.parameters()), f"stage {index}"
    assert all(p.grad.abs().sum() > 0 for p in model.classifier.parameters())


# ---------------------------------------------------------------------------------------------- real training


def _test_accuracy(run_path: Path) -> dict:
    loaded = load_run(run_path)
    assert not loaded.model.training
    test = DeviceLoader(*loaded.splits["test"], 256, "cpu", loaded.dataset.mean, loaded.dataset.std)
    method = get_method(loaded.config.method, **loaded.config.method_options())
    return validate(loaded.model, method, test, loaded.model.costs.relative())


@needs_fashion
@pytest.mark.parametrize("method", list_methods())
def test_each_method_beats_chance_on_fashion_mnist(method, data_dir, tmp_path):
    config = tiny(data_dir, method=method)
    result = fit(config, tmp_path / "run")
    stats = _test_accuracy(tmp_path / "run")
    # 10 balanced classes: chance is 0.10. Seen in development: 0.63-0.71 for every method on 80 test images.
    assert stats["acc_method"] >= 0.40, stats
    if method in ("bnet", "report-proposed", "report-maxprob"):
        # Jointly trained exits: the final classifier and the first exit learn too.
        assert stats[f"acc_exit{len(result.config.exits)}"] >= 0.40, stats
        assert stats["acc_exit0"] >= 0.30, stats
    assert len(result.rows) == 3


@needs_fashion
def test_run_directory_contents_and_best_checkpoint(data_dir, tmp_path):
    config = tiny(data_dir, method="proposed", exits=[1, 5], epochs=2)
    result = fit(config, tmp_path / "run")
    run = rundir.RunDir(tmp_path / "run")
    for name in (rundir.CONFIG, rundir.ENV, rundir.STATE, rundir.METRICS, rundir.CHECKPOINT, rundir.LOG):
        assert run.has(name), name
    assert not run.has(rundir.LAST)  # a finished run keeps no training state: nothing resumes it
    assert rundir.read_json(run.file(rundir.STATE))["status"] == "finished"
    saved = rundir.read_json(run.file(rundir.CONFIG))
    assert (saved["num_classes"], saved["in_channels"], saved["image_size"], saved["exits"]) == (10, 1, 28, [1, 5])
    env = rundir.read_json(run.file(rundir.ENV))
    assert env["seed"] == 0 and env["dataset"] == "fashion-mnist" and len(env["dataset_fingerprint"]) > 0
    assert env["torch"] == torch.__version__
    rows = rundir.read_csv(run.file(rundir.METRICS))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    columns = list(rows[0])
    assert columns[:2] == ["epoch", "train_loss"]
    for column in ["val_loss", "val_acc_exit0", "val_acc_exit2", "val_acc_method", "gate_mean_exit0", "gate_mean_exit1",
                   "cost_vs_final", "macs_vs_plain", "lr", "seconds", "train_soft_nll", "train_cost_vs_final"]:
        assert column in columns
    checkpoint = rundir.load_torch(run.file(rundir.CHECKPOINT))
    assert set(checkpoint) >= {"model", "config", "epoch", "val_loss"}
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert checkpoint["epoch"] == int(best["epoch"]) == result.selected_epoch == result.best_epoch
    # The loaded run reproduces the validation accuracy of every exit logged for the best epoch,
    # counted here independently from the raw logits.
    loaded = load_run(run.path)
    images, labels = loaded.splits["val"]
    x = DeviceLoader(images, labels, len(labels), "cpu", loaded.dataset.mean, loaded.dataset.std)
    batch, targets = next(iter(x))
    with torch.no_grad():
        out = loaded.model(batch)
    for b, logits in enumerate(out.logits):
        hits = sum(int(p == t) for p, t in zip(logits.argmax(1).tolist(), targets.tolist()))
        assert hits / len(targets) == pytest.approx(float(best[f"val_acc_exit{b}"]), abs=1e-9)


def _weights(path: Path) -> dict:
    return rundir.load_torch(path)["model"]


def _assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


class _Interrupt(Exception):
    pass


class _DieMidEpoch:
    """A progress object that raises half-way through `epoch`, like a process killed mid-epoch."""

    def __init__(self, epoch: int):
        self.epoch, self.current, self.seen = epoch, 0, 0

    def start_epoch(self, epoch, epochs, num_images):
        self.current, self.seen, self.total = epoch, 0, num_images

    def advance(self, images, loss):
        self.seen += images
        if self.current == self.epoch and self.seen > self.total // 2:
            raise _Interrupt()

    def end_epoch(self, row):
        pass


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run with dropout and crop+flip augmentation (all the randomness there is);
    checkpoint.pt holds the last epoch's weights (--select-last), so it compares the whole run bit for bit."""
    config = tiny(data_dir, method="report-proposed", batch_norm=False, classifier="report", augment=True, subset=200,
                  select_best=False, patience=0)
    path = tmp_path_factory.mktemp("reference") / "run"
    fit(config, path)
    return config, path


@needs_fashion
def test_resume_after_an_interruption_equals_an_uninterrupted_run(reference_run, tmp_path):
    config, reference = reference_run
    run = rundir.RunDir(tmp_path / "run")
    with pytest.raises(_Interrupt):
        fit(config, run.path, progress=_DieMidEpoch(epoch=2))
    assert rundir.load_torch(run.file(rundir.LAST))["epoch"] == 1
    state = rundir.read_json(run.file(rundir.STATE))
    assert (state["status"], state["epoch"], state["epochs"]) == ("failed", 1, 3)  # the progress object raised
    result = fit(config, run.path, resume=True)
    assert [row["epoch"] for row in result.rows] == [1, 2, 3]
    _assert_bitwise_equal(_weights(run.file(rundir.CHECKPOINT)), _weights(reference / rundir.CHECKPOINT))
    ours, theirs = rundir.read_csv(run.file(rundir.METRICS)), rundir.read_csv(reference / rundir.METRICS)
    assert [r["val_loss"] for r in ours] == [r["val_loss"] for r in theirs]
    # Resuming a finished run does nothing and says so.
    assert fit(config, run.path, resume=True).already_finished


def _reference_command(config, path: Path) -> list[str]:
    """`repro train` of the reference run's config, as a subprocess command."""
    return [sys.executable, "-m", "repro", "train", "--method", "report-proposed", "--dataset", "fashion-mnist",
            "--data-dir", config.data_dir, "--subset", "200", "--epochs", "3", "--batch-size", "32", "--lr", "0.001",
            "--width", "0.125", "--no-batch-norm", "--classifier", "report", "--augment", "--device", "cpu",
            "--precision", "fp32", "--select-last", "--patience", "0", "--run-dir", str(path)]


def _wait_for_first_epoch(process: subprocess.Popen, path: Path, seconds: float = 900, log: Path | None = None) -> None:
    """Until the run has saved its first epoch (last.pt). Generous: a fresh environment compiles every module
    on first import, and the machine may be busy with other training. `log`: the child's stderr, if kept."""
    deadline = time.time() + seconds
    while not (path / rundir.LAST).is_file() and time.time() < deadline:
        if process.poll() is not None:
            said = log.read_text() if log is not None and log.is_file() else "(its stderr was not kept)"
            raise AssertionError(f"the run ended (exit {process.returncode}) before saving an epoch: {said}")
        time.sleep(0.02)
    assert (path / rundir.LAST).is_file(), f"no epoch saved within {seconds:.0f} s"


@needs_fashion
def test_resume_after_kill_9_equals_an_uninterrupted_run(reference_run, tmp_path):
    config, reference = reference_run
    path = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "w") as err:
        process = subprocess.Popen(_reference_command(config, path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
        # Wait until the first epoch is saved, then kill the process without warning during the next one.
        _wait_for_first_epoch(process, path, log=tmp_path / "stderr.txt")
        if (path / rundir.METRICS).is_file():  # let the second epoch get under way (a short sleep: the machine may be busy)
            seconds = float(rundir.read_csv(path / rundir.METRICS)[0]["seconds"])
            time.sleep(seconds / 5)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert (path / rundir.LAST).is_file(), "the run was killed before it saved an epoch"
    assert not rundir.load_torch(path / rundir.LAST)["finished"], "the run finished before it could be killed"
    done = subprocess.run([sys.executable, "-m", "repro", "train", "--resume", str(path), "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_bitwise_equal(_weights(path / rundir.CHECKPOINT), _weights(reference / rundir.CHECKPOINT))


@needs_fashion
def test_sigterm_leaves_a_resumable_run_and_says_how_to_resume(reference_run, tmp_path):
    config, reference = reference_run
    path = tmp_path / "run"
    # Output to files, not pipes: a child that fills an unread pipe would block before it saves an epoch.
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        process = subprocess.Popen(_reference_command(config, path), cwd=tmp_path, stdout=out, stderr=err, text=True)
        _wait_for_first_epoch(process, path, log=tmp_path / "stderr.txt")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 143, stderr  # 128 + SIGTERM, as a shell reports a terminated program
    assert "Traceback" not in stderr
    message = " ".join(stderr.split())
    assert message.startswith("Error: SIGTERM: run") and f"Resume it with: repro train --resume {path}" in message
    state = rundir.read_json(path / rundir.STATE)
    assert state["status"] == "interrupted" and state["epochs"] == 3
    assert f"interrupted at epoch {state['epoch']}/3" in message
    # last.pt is whole and agrees with state.json: the interrupted epoch is not half-saved.
    assert rundir.load_torch(path / rundir.LAST)["epoch"] == state["epoch"] >= 1
    # The printed command resumes it, to bitwise the weights of an uninterrupted run.
    done = subprocess.run([sys.executable, "-m", "repro", "train", "--resume", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert rundir.read_json(path / rundir.STATE)["status"] == "finished"
    _assert_bitwise_equal(_weights(path / rundir.CHECKPOINT), _weights(reference / rundir.CHECKPOINT))


@needs_fashion
def test_early_stopping_keeps_the_best_epoch(data_dir, tmp_path):
    # Adam at lr 0.01 on 160 images overshoots: validation loss rises within a few epochs (seen in development:
    # 2.27 then 5.0); patience 1 stops at the first epoch that is not an improvement.
    config = tiny(data_dir, method="baseline", epochs=6, patience=1, lr=0.01, subset=200)
    result = fit(config, tmp_path / "run")
    losses = [row["val_loss"] for row in result.rows]
    assert result.stopped_early and len(losses) < 6
    # Patience 1: training stops right after the first epoch whose val loss is not the lowest so far.
    first_worse = next(i for i in range(1, len(losses)) if losses[i] >= min(losses[:i]))
    assert len(losses) == first_worse + 1
    best = min(range(len(losses)), key=losses.__getitem__) + 1
    assert result.best_epoch == best == first_worse
    assert rundir.load_torch(tmp_path / "run" / rundir.CHECKPOINT)["epoch"] == best
    state = rundir.read_json(tmp_path / "run" / rundir.STATE)
    assert (state["status"], state["stopped_early"], state["epoch"]) == ("finished", True, len(losses))


@needs_fashion
def test_select_last_keeps_the_last_epoch(data_dir, tmp_path):
    config = tiny(data_dir, method="bnet", exits=[2], epochs=2, subset=200, select_best=False, patience=0)
    result = fit(config, tmp_path / "run")
    assert result.selected_epoch == 2 and not result.stopped_early
    checkpoint = rundir.load_torch(tmp_path / "run" / rundir.CHECKPOINT)
    assert checkpoint["epoch"] == 2 and checkpoint["val_loss"] == result.rows[-1]["val_loss"]


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, avx512_bf16, amx, expected):
    """oneDNN reports bf16 as supported on any AVX-512 CPU, emulating it where the CPU lacks AVX-512 BF16 and
    AMX (there bf16 trained at 0.6x of fp32's speed): auto must read the instruction sets themselves."""
    from repro.trainer import native_bf16, resolve_precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16(torch.device("cpu")) is (expected == "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16" and resolve_precision("fp32", torch.device("cpu")) == "fp32"
