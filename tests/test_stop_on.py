"""`--stop-on`: early stopping and the checkpoint selection of a soft-output method watch either its loss or
its own objective (NLL of the soft output + lambda x expected cost, without the per-exit CE terms)."""

from __future__ import annotations

import pytest

from repro import rundir, trainer
from repro.config import TrainConfig
from repro.errors import ReproError


def synthetic(tmp_path, **overrides) -> TrainConfig:
    options = dict(dataset="synthetic", data_dir=str(tmp_path / "data"), subset=200, epochs=4, batch_size=50,
                   width=0.125, exits=[1, 4], batch_norm=True, classifier="linear", precision="fp32", patience=2)
    options.update(overrides)
    return TrainConfig.from_recipe("report", **options)


def test_stop_on_is_a_soft_output_option_defaulting_to_the_loss():
    for method in ("proposed", "report-proposed", "report-maxprob"):
        assert TrainConfig.from_recipe(method=method).stop_on == "loss"
    assert TrainConfig.from_recipe(method="bnet").stop_on is None
    with pytest.raises(ReproError, match="--stop-on does not apply to method 'bnet'"):
        TrainConfig.from_recipe(method="bnet", stop_on="objective")
    with pytest.raises(ReproError, match="valid: loss, objective"):
        TrainConfig.from_recipe(method="proposed", stop_on="accuracy")
    # A config.json written before the option existed watched the loss; reading it must not change that
    # (nor make a grid think the committed cell has other options than the preset's).
    old = TrainConfig.from_recipe(method="proposed").to_dict()
    del old["stop_on"]
    assert TrainConfig.from_dict(old).stop_on == "loss"
    assert TrainConfig.from_dict(old).differences(TrainConfig.from_recipe(method="proposed")) == []


def scripted_validation(monkeypatch, losses, objectives):
    """validate() as it is, with the watched numbers replaced by scripted ones, epoch by epoch."""
    real, epoch = trainer.validate, iter(range(len(losses)))

    def validate(*args, **kwargs):
        stats = real(*args, **kwargs)
        i = next(epoch)
        return {**stats, "loss": losses[i], "objective": objectives[i]}

    monkeypatch.setattr(trainer, "validate", validate)


@pytest.mark.parametrize("stop_on, stopped_early, kept", [("loss", False, 5), ("objective", True, 2)])
def test_early_stopping_and_selection_follow_the_watched_quantity(monkeypatch, tmp_path, stop_on, stopped_early, kept):
    # The loss falls every epoch while the objective is lowest at epoch 2 until epoch 5: patience 2 stops the
    # objective run after epoch 4 and keeps epoch 2; the loss run trains all 5 epochs and keeps the last.
    scripted_validation(monkeypatch, losses=[3.0, 2.0, 1.0, 0.5, 0.4], objectives=[1.0, 0.5, 0.7, 0.9, 0.4])
    result = trainer.fit(synthetic(tmp_path, method="proposed", stop_on=stop_on, epochs=5), tmp_path / "run")
    assert (result.stopped_early, result.selected_epoch) == (stopped_early, kept)
    assert rundir.load_torch(tmp_path / "run" / rundir.CHECKPOINT)["epoch"] == kept
    assert [row["val_objective"] for row in result.rows] == [1.0, 0.5, 0.7, 0.9, 0.4][:len(result.rows)]
    assert len(result.rows) == (4 if stopped_early else 5)
    log = (tmp_path / "run" / rundir.LOG).read_text()
    assert f"checkpoint.pt holds epoch {kept} (val {stop_on} " in log
    # A finished run read back (resume of a finished run) finds the same best epoch in metrics.csv.
    again = trainer.fit(result.config, tmp_path / "run", resume=True)
    assert again.already_finished and again.state.best_epoch == kept


def test_a_finished_run_read_back_finds_its_best_epoch_after_the_warm_up(monkeypatch, tmp_path):
    # Two warm-up epochs (per-exit CE alone) whose objective is lower than any later one: training starts the
    # selection afresh after them and keeps epoch 4; the finished run read back must say the same, with the
    # watched objective of that epoch (checkpoint.pt's own number is the loss).
    scripted_validation(monkeypatch, losses=[3.0, 2.0, 1.0, 0.5, 0.4], objectives=[0.1, 0.2, 0.9, 0.6, 0.8])
    config = synthetic(tmp_path, method="proposed", stop_on="objective", epochs=5, joint_warmup=2, patience=0)
    result = trainer.fit(config, tmp_path / "run")
    assert (result.state.best_epoch, result.selected_epoch) == (4, 4)
    again = trainer.fit(result.config, tmp_path / "run", resume=True)
    assert again.already_finished
    assert (again.state.best_epoch, again.state.selected_epoch) == (4, 4)
    assert again.state.best_val_loss == again.state.selected_val_loss == 0.6


def test_a_non_finite_objective_stops_like_a_non_finite_loss(monkeypatch, tmp_path):
    scripted_validation(monkeypatch, losses=[3.0, 2.0, 1.0], objectives=[1.0, float("nan"), 0.5])
    with pytest.raises(ReproError, match="the validation objective became nan in epoch 2.*last good checkpoint is kept"):
        trainer.fit(synthetic(tmp_path, method="proposed", stop_on="objective", epochs=3), tmp_path / "run")
    assert rundir.load_torch(tmp_path / "run" / rundir.CHECKPOINT)["epoch"] == 1


def test_the_objective_is_the_loss_without_the_per_exit_terms(tmp_path):
    # The literal loss (no per-exit CE, no final-exit CE) is its own objective: the two columns agree.
    literal = trainer.fit(synthetic(tmp_path, method="proposed", joint_weight=0.0, epochs=1), tmp_path / "literal")
    row = literal.rows[0]
    assert row["val_objective"] == pytest.approx(row["val_loss"], rel=1e-6)
    assert row["train_objective"] == pytest.approx(row["train_soft_nll"] + 0.1 * row["train_cost_vs_final"], rel=1e-5)
    # With the joint loss the per-exit CEs (three exits here) come on top of it.
    joint = trainer.fit(synthetic(tmp_path, method="proposed", epochs=1), tmp_path / "joint")
    row = joint.rows[0]
    assert row["val_loss"] > row["val_objective"] + 1.0
    assert row["train_loss"] == pytest.approx(row["train_objective"] + sum(row[f"train_ce_exit{b}"] for b in range(3)), rel=1e-4)


def test_metrics_of_a_run_resumed_across_a_new_column_are_written(tmp_path):
    # Rows kept in a last.pt written before val_objective existed, then rows with it: both are kept, the
    # older rows' new cells empty (write_csv once raised "dict contains fields not in fieldnames" here).
    rows = [{"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "val_acc_method": 0.3},
            {"epoch": 2, "train_loss": 1.8, "val_loss": 1.4, "val_objective": 0.9, "val_acc_method": 0.4}]
    rundir.write_csv(tmp_path / "metrics.csv", rows)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,val_acc_method,val_objective"
    assert lines[1].endswith(",") and lines[2].endswith(",0.9")
