"""Rich progress displays for the CLI: one live display holding any number of bars.

`TrainingProgress` is repro.trainer.Progress drawn as two bars: the whole run (images done of epochs x
images, elapsed time and the estimated time left, so the total is known from the first batches on) and the
current epoch (images/s, loss). `repro grid` puts its overall bar (cells done of all) in the same display.
"""

from __future__ import annotations

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from repro.console import console


class _Throughput(ProgressColumn):
    def render(self, task):
        unit = task.fields.get("unit", "img")
        return Text(f"{task.speed:,.0f} {unit}/s" if task.speed and unit == "img" else "")


def make_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Throughput(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
        console=console, transient=True,
    )


class TrainingProgress:
    """repro.trainer.Progress on a Rich Progress: a bar for the run and one for the epoch; one line per epoch."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.run_task = None
        self.epoch_task = None

    def start_epoch(self, epoch: int, epochs: int, num_images: int) -> None:
        if self.run_task is None:
            self.run_task = self.progress.add_task(f"run ({epochs} epochs)", total=epochs * num_images,
                                                   completed=(epoch - 1) * num_images, info="")
        if self.epoch_task is not None:
            self.progress.remove_task(self.epoch_task)
        self.epoch_task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=num_images, info="loss -")

    def advance(self, images: int, loss: float | None) -> None:
        self.progress.advance(self.run_task, images)
        if loss is None:
            self.progress.advance(self.epoch_task, images)
        else:
            self.progress.update(self.epoch_task, advance=images, info=f"loss {loss:.4f}")

    def end_epoch(self, row: dict) -> None:
        from repro.trainer import describe_epoch

        self.progress.console.print(describe_epoch(row), highlight=False, soft_wrap=True, markup=False)

    def close(self) -> None:
        """Remove this run's bars (a grid goes on to its next cell in the same display)."""
        for task in (self.run_task, self.epoch_task):
            if task is not None:
                self.progress.remove_task(task)
        self.run_task = self.epoch_task = None
