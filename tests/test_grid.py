"""`repro grid`: expansion into cells, names, the cell config equal to `repro train`'s, skip and resume,
failure isolation, worker processes, submitit's local executor, the sbatch parameters, and every bad input
as one line through CliRunner. Grids here have one or two tiny cells on the synthetic set."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repro import rundir
from repro.cli import app
from repro.errors import ReproError
from repro.grid import Steps, load_grid
from repro.grid_runner import plan_cell, run_cell

runner = CliRunner()
# A VGG-13 at 1/8 width on 150 synthetic images, one epoch: a few seconds per cell.
TINY = """
[options]
dataset = "synthetic"
width = 0.125
subset = 150
epochs = 1
batch_size = 50
batch_norm = true
classifier = "linear"
head = "pool"
precision = "fp32"
"""


def write_grid(folder: Path, body: str, name: str = "g", output: str | None = None) -> Path:
    path = folder / f"{name}.toml"
    out = output or str(folder / "out")
    path.write_text(f'name = "{name}"\noutput = "{out}"\nreport = false\n' + textwrap.dedent(body))
    return path


def invoke(*args):
    return runner.invoke(app, ["grid", *[str(a) for a in args]])


def error_line(result, exit_code=1) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.stderr.split())
    assert text.startswith("Error: "), result.output
    return text


# ---------------------------------------------------------------------------------------------- expansion


def test_cells_are_the_cartesian_product_named_by_the_varying_axes(tmp_path):
    grid = load_grid(str(write_grid(tmp_path, TINY + """
        [axes]
        method = ["bnet", "proposed"]
        seed = [0, 1]
        """)))
    assert [cell.name for cell in grid.cells] == ["bnet-seed0", "bnet-seed1", "proposed-seed0", "proposed-seed1"]
    assert all(cell.path == tmp_path / "out" / cell.name for cell in grid.cells)
    assert {cell.config.width for cell in grid.cells} == {0.125}  # shared options reach every cell


def test_a_cell_config_is_the_one_repro_train_builds_from_the_same_options(tmp_path):
    from repro.plan import plan_runs

    grid = load_grid(str(write_grid(tmp_path, """
        [options]
        recipe = "modern"
        dataset = "synthetic"
        exits = [0, 4]
        [axes]
        method = ["proposed"]
        cost_weight = [0.01, 1.0]
        """)))
    assert [cell.name for cell in grid.cells] == ["cost_weight0.01", "cost_weight1"]
    (planned,) = plan_runs({"method": "proposed", "dataset": "synthetic", "exits": [0, 4], "cost_weight": 1.0}, "modern")
    assert grid.cells[1].config == planned.config


def test_blocks_add_products_with_their_own_options(tmp_path):
    grid = load_grid(str(write_grid(tmp_path, TINY + """
        [axes]
        method = ["bnet"]
        [[blocks]]
        options = { width = 0.25 }
        axes = { method = ["baseline", "bnet"] }
        """)))
    assert [cell.name for cell in grid.cells] == ["bnet-width0.125", "baseline-width0.25", "bnet-width0.25"]


def test_named_blocks_name_their_cells(tmp_path):
    grid = load_grid(str(write_grid(tmp_path, TINY + """
        [[blocks]]
        name = "reference"
        options = { method = "bnet" }
        [[blocks]]
        name = "closed"
        options = { method = "proposed", gate_bias = -3.0 }
        axes = { seed = [0, 1] }
        """)))
    assert [cell.name for cell in grid.cells] == ["reference", "closed-seed0", "closed-seed1"]
    assert grid.cells[1].config.gate_bias == -3.0


def test_set_overrides_shared_options(tmp_path):
    grid = load_grid(str(write_grid(tmp_path, TINY + '[axes]\nmethod = ["bnet"]\n')), overrides={"width": 0.25})
    assert grid.cells[0].config.width == 0.25


def test_presets_expand(tmp_path):
    assert len(load_grid("smoke").cells) == 3
    assert len(load_grid("paper").cells) == 3 * 3 * 5 * 3
    cpu = load_grid("cpu")
    assert len(cpu.cells) == 2 * 5 + 4 + 2 + 2 + 2 and cpu.output == Path("results/cpu")
    assert {cell.name for cell in cpu.cells} >= {"bnet-cifar10-jpeg", "lambda-cost_weight0.3", "full-width-bnet", "second-seed-proposed"}
    second = next(cell for cell in cpu.cells if cell.name == "second-seed-proposed")
    assert (second.config.seed, second.config.dataset, second.config.joint_weight) == (1, "cifar10-jpeg", 1.0)
    runner_up = next(cell for cell in cpu.cells if cell.name == "gate-detach-seed1")
    assert (runner_up.config.seed, runner_up.config.method, runner_up.config.gate_detach) == (1, "proposed", True)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("body, exit_code, message", [
    ("[axes]\nmethod = [\"bnet\"]\nseed = [0,, 1]\n", 1, "is not valid TOML"),
    ("[axes]\nlearning_rate = [0.1]\n", 2, "unknown axis 'learning_rate'; valid: model, method"),
    ("[options]\nlearning_rate = 0.1\n[axes]\nmethod = [\"bnet\"]\n", 2, "unknown option 'learning_rate'"),
    ("[axes]\nmethod = []\n", 1, "axis method is empty"),
    ("[axes]\nmethod = \"bnet\"\n", 1, "axis method must be a list"),
    ("[axes]\nepochs = [\"ten\"]\n", 1, "--epochs must be an integer"),
    ("[axes]\nmethod = [\"nope\"]\n", 2, "unknown method 'nope'"),
    ("[axes]\nmethod = [\"bnet\"]\n[[blocks]]\noptions = { lr = 5e-4 }\naxes = { method = [\"bnet\"] }\n", 1,
     "two cells would share the run directory vgg13-bnet-synthetic-seed0"),
    ("name = \"x\"\n", 1, "has no [axes]"),
    ("report = \"false\"\n[axes]\nmethod = [\"bnet\"]\n", 1, "report must be true or false"),
    ("[axes]\nmethod = [\"bnet\"]\n[steps]\nsweep = { max_drop = \"1\" }\n", 1, "sweep is { max_drop = D }"),
    ("[axes]\nmethod = [\"bnet\"]\n[slurm]\nmem = \"16G\"\n", 1, "mem must be a number"),
    ("[axes]\nmethod = [\"bnet\"]\n[steps]\ntiming = \"no\"\n", 1, "timing must be true or false"),
    ("[axes]\nmethod = [\"bnet\"]\n[steps]\nfit_gates = true\nsweep = false\n", 1, "fit_gates needs a sweep"),
])
def test_bad_grid_files_are_one_line(tmp_path, body, exit_code, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    line = error_line(invoke(path), exit_code)
    assert message in line
    if "TOML" in message:
        assert "line 3" in line  # the parser's position, so the user can find the mistake


def test_bad_command_lines_are_one_line(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, TINY + '[axes]\nmethod = ["bnet"]\n')
    assert "unknown grid 'nonesuch'" in error_line(invoke("nonesuch"), 2)
    assert "grid file" in error_line(invoke(tmp_path / "missing.toml")) and "not found" in error_line(invoke(tmp_path / "missing.toml"))
    assert "--jobs must be at least 1" in error_line(invoke(grid, "--jobs", "0"))
    assert "unknown option 'colour'" in error_line(invoke(grid, "--set", "colour=red"), 2)
    assert "--set takes KEY=VALUE" in error_line(invoke(grid, "--set", "width"))
    assert "--width must be a number" in error_line(invoke(grid, "--set", "width=wide"))
    assert "matches no cell" in error_line(invoke(grid, "--only", "resnet*"))
    # --set of an option that an axis (or a block) sets would be silently overridden: refused.
    assert "--set method: the grid sets method in a block or an axis" in error_line(invoke(grid, "--set", "method=proposed"), 2)
    assert "unknown executor 'k8s'" in error_line(invoke(grid, "--executor", "k8s"), 2)
    import builtins

    real_import = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit":
            raise ImportError("No module named 'submitit'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    assert 'pip install ".[cluster]"' in error_line(invoke(grid, "--executor", "slurm"))
    assert not (tmp_path / "out").exists()  # nothing ran


def test_list_and_dry_run(tmp_path):
    listed = invoke("--list")
    assert listed.exit_code == 0 and "smoke" in listed.output and "paper" in listed.output and "135" in listed.output
    grid = write_grid(tmp_path, TINY + '[axes]\nmethod = ["bnet", "proposed"]\n')
    dry = invoke(grid, "--dry-run")
    assert dry.exit_code == 0 and "bnet" in dry.output and "train, eval, sweep" in dry.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    """A two-cell grid run through the CLI once (baseline and bnet), with timing and the report."""
    folder = tmp_path_factory.mktemp("grid")
    path = write_grid(folder, TINY + """
        [axes]
        method = ["baseline", "bnet"]
        [steps]
        timing = true
        timing_images = 4
        """)
    result = invoke(path, "--report", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return folder, path, result


def test_a_grid_runs_every_step_and_reports(finished_grid):
    folder, _, result = finished_grid
    out = folder / "out"
    for name in ("baseline", "bnet"):
        run = rundir.RunDir(out / name)
        for file in (rundir.CONFIG, rundir.STATE, rundir.METRICS, rundir.EVAL, rundir.TIMING):
            assert run.has(file), (name, file)
    assert (out / "bnet" / rundir.SWEEP).is_file() and (out / "bnet" / rundir.CALIBRATION).is_file()
    assert not (out / "baseline" / rundir.SWEEP).exists()  # one classifier: nothing to sweep
    assert (out / "report" / "report.md").is_file()
    assert "grid g: 2 cell(s)" in result.output


def test_a_second_run_trains_nothing_even_without_checkpoints(finished_grid, tmp_path):
    folder, path, _ = finished_grid
    again = invoke(path, "--no-report")
    assert again.exit_code == 0 and again.output.count("nothing to do") == 2
    # A committed results folder has no checkpoints and still counts as done.
    import shutil

    copy = tmp_path / "committed"
    shutil.copytree(folder / "out", copy, ignore=shutil.ignore_patterns("*.pt"))
    grid = load_grid(str(path))
    for cell in grid.cells:
        moved = cell.__class__(cell.name, cell.options, cell.config, copy / cell.name)
        assert plan_cell(moved, grid.steps).done, cell.name


def test_a_timing_file_of_an_older_repro_is_timed_again(finished_grid, tmp_path):
    import shutil

    folder, path, _ = finished_grid
    copy = tmp_path / "older"
    shutil.copytree(folder / "out" / "bnet", copy / "bnet")
    data = rundir.read_json(copy / "bnet" / rundir.TIMING)
    data.pop("batch1_statistic")
    rundir.write_json(copy / "bnet" / rundir.TIMING, data)
    grid = load_grid(str(path))
    (cell,) = [c for c in grid.cells if c.name == "bnet"]
    moved = cell.__class__(cell.name, cell.options, cell.config, copy / "bnet")
    assert plan_cell(moved, grid.steps).steps == ["timing"]


def test_the_fit_gates_step_fits_both_policies_once_and_sweeps_them(finished_grid, tmp_path):
    import shutil

    from repro import artifacts

    folder, _, _ = finished_grid
    path = write_grid(tmp_path, TINY + '[axes]\nmethod = ["bnet"]\n[steps]\nfit_gates = true\n')
    grid = load_grid(str(path))
    (cell,) = grid.cells
    shutil.copytree(folder / "out" / "bnet", cell.path)  # the finished grid's bnet, trained, evaluated and swept
    assert plan_cell(cell, grid.steps).steps == ["fit-gates"]  # trained, evaluated and swept already
    result = invoke(path, "--no-report")
    assert result.exit_code == 0, result.output
    run = rundir.RunDir(cell.path)
    sha = artifacts.checkpoint_sha256(run)
    assert set(artifacts.read_exit_policies(run, sha)) == {"fitted-gate", "fitted-features"}
    assert {"fitted-gate", "fitted-features", "entropy"} <= {row["criterion"] for row in artifacts.read_sweep(run)}
    assert artifacts.read_calibration(run)["target"] == {"max_drop": 1.0}  # the grid's target kept
    assert plan_cell(cell, grid.steps).done
    # Without its checkpoint (a committed results folder) the fitted policies still count as current, also
    # without sweep.source.json (the checkpoint exit_policies.json records is then the one to match).
    committed = tmp_path / "committed" / "bnet"
    shutil.copytree(cell.path, committed, ignore=shutil.ignore_patterns("*.pt"))
    moved = cell.__class__(cell.name, cell.options, cell.config, committed)
    assert plan_cell(moved, grid.steps).done
    (committed / rundir.SWEEP_SOURCE).unlink()
    assert plan_cell(moved, grid.steps).done
    # A committed folder fitted before the step existed cannot be fitted (no outputs.pt, no checkpoint.pt): the
    # plan says so instead of a step that must fail.
    (committed / rundir.EXIT_POLICIES).unlink()
    plan = plan_cell(moved, grid.steps)
    assert plan.done and "no exit policies fitted" in plan.note

    # Policies fitted by hand with another lambda are not the grid's: it fits them again.
    assert runner.invoke(app, ["fit-gates", str(cell.path), "--lambda", "0.5"]).exit_code == 0
    assert plan_cell(cell, grid.steps).steps == ["fit-gates"]
    # A damaged exit_policies.json does not fail the cell: the sweep leaves it out, fit-gates writes it anew.
    run.file(rundir.EXIT_POLICIES).write_text("{not json")
    run.file(rundir.SWEEP).unlink()
    assert plan_cell(cell, grid.steps).steps == ["sweep", "fit-gates"]
    result = invoke(path, "--no-report")
    assert result.exit_code == 0, result.output
    assert plan_cell(cell, grid.steps).done
    assert {policy.cost_weight for policy in artifacts.read_exit_policies(run, sha).values()} == {0.1}


def test_a_changed_option_is_an_error_for_that_cell_never_an_overwrite(finished_grid):
    folder, path, _ = finished_grid
    result = invoke(path, "--set", "lr=0.01", "--only", "bnet", "--no-report")  # lr is shared: names do not change
    assert result.exit_code == 1 and "holds a run with other options (lr: 0.0005 -> 0.01)" in " ".join(result.output.split())
    assert (folder / "out" / "bnet" / rundir.EVAL).is_file()


def test_an_interrupted_cell_resumes(tmp_path):
    grid = load_grid(str(write_grid(tmp_path, TINY + '[axes]\nmethod = ["bnet"]\n')), overrides={"epochs": 2})
    (cell,) = grid.cells

    class StopAfterOneEpoch:
        def start_epoch(self, epoch, epochs, num_images):
            if epoch == 2:
                raise KeyboardInterrupt  # what Ctrl-C does inside the training loop

        def advance(self, images, loss):
            pass

        def end_epoch(self, row):
            pass

    with pytest.raises(ReproError, match="interrupted at epoch 1/2"):
        run_cell(cell, grid.steps, "cpu", StopAfterOneEpoch())
    plan = plan_cell(cell, grid.steps)
    assert plan.train == "resume" and plan.note == "resume after epoch 1/2"
    outcome = run_cell(cell, grid.steps, "cpu")
    assert outcome.status == "ran" and outcome.steps == ["train", "eval", "sweep"]
    rows = rundir.read_csv(cell.path / rundir.METRICS)
    assert [row["epoch"] for row in rows] == ["1", "2"]


def test_a_failing_cell_does_not_stop_the_others(tmp_path):
    grid = write_grid(tmp_path, TINY + f"""
        [axes]
        dataset = ["cifar10", "synthetic"]
        data_dir = ["{tmp_path / 'no-data'}"]
        method = ["bnet"]
        """)
    result = invoke(grid, "--no-report")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "dataset cifar10 not found" in text and "1 of 2 cell(s) failed" in text
    assert rundir.RunDir(tmp_path / "out" / "synthetic").has(rundir.EVAL)


@pytest.mark.slow
def test_two_worker_processes(tmp_path):
    grid = write_grid(tmp_path, TINY + '[axes]\nmethod = ["baseline", "bnet"]\n')
    result = invoke(grid, "--jobs", "2", "--no-report")
    assert result.exit_code == 0, result.output
    for name in ("baseline", "bnet"):
        assert rundir.read_json(tmp_path / "out" / name / rundir.STATE)["status"] == "finished"


# ---------------------------------------------------------------------------------------------- submitit


@pytest.mark.slow
def test_submitit_local_executor_runs_real_jobs(tmp_path):
    pytest.importorskip("submitit")
    from repro.slurm import collect_job, make_executor, submit_cells

    grid = load_grid(str(write_grid(tmp_path, TINY + '[axes]\nmethod = ["bnet"]\n[steps]\nsweep = {}\n')))
    executor = make_executor(tmp_path / "out" / ".submitit", {}, cluster="local")
    (job,) = submit_cells(executor, grid.cells, Steps(sweep={}), "cpu")
    outcome = collect_job(job, grid.cells[0])
    assert outcome.status == "ran" and outcome.steps == ["train", "eval", "sweep"], outcome
    assert rundir.RunDir(grid.cells[0].path).has(rundir.SWEEP) and not rundir.RunDir(grid.cells[0].path).has(rundir.CALIBRATION)
    assert list((tmp_path / "out" / ".submitit").glob("*_log.out"))  # submitit's logs stay inside the grid's output


def test_slurm_parameters_reach_the_sbatch_script(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from repro.slurm import make_executor, slurm_parameters

    # No SLURM here: tell submitit that srun exists, build the executor as `repro grid --executor slurm`
    # does, and read the sbatch script it would submit (nothing is submitted).
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    parameters = slurm_parameters({"partition": "gpu", "gpus_per_job": 1, "cpus_per_job": 8, "time": 90, "mem": 16.0})
    executor = make_executor(tmp_path, parameters, jobs=4, exclusive=True)
    script = executor._executor._make_submission_file_text("python -m repro", "uid").splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=90", "#SBATCH --mem=16GB", "#SBATCH --exclusive", "#SBATCH --job-name=repro-grid"):
        assert line in script, line
    assert slurm_parameters({"time": None}) == {"time": 120}  # never submitit's 5 minutes, which stop every real cell


def test_errors_cross_process_boundaries():
    import pickle

    from repro.errors import UnknownNameError
    from repro.trainer import NonFiniteLoss

    for error in (UnknownNameError("model", "vgg99", ["vgg13"]), NonFiniteLoss(3, float("nan"))):
        copy = pickle.loads(pickle.dumps(error))
        assert str(copy) == str(error) and copy.exit_code == error.exit_code


@pytest.mark.slow
def test_the_smoke_preset_runs_end_to_end_and_then_has_nothing_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the preset writes to runs/grid/smoke below the working folder
    first = invoke("smoke", "--device", "cpu")
    assert first.exit_code == 0, first.output
    out = tmp_path / "runs" / "grid" / "smoke"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["baseline", "bnet", "proposed", "report"]
    assert all((out / name / rundir.TIMING).is_file() for name in ("baseline", "bnet", "proposed"))
    assert (out / "report" / "report.html").is_file()
    again = invoke("smoke", "--device", "cpu", "--no-report")
    assert again.exit_code == 0 and again.output.count("nothing to do") == 3
