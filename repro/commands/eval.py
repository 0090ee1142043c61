"""`repro eval RUN`: every exit's accuracy and cost, the default operating point, and (--timing) real latencies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from repro.console import cli_errors, console, say


@cli_errors
def eval_command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="The run directory (holds config.json and checkpoint.pt).", show_default=False)],
    timing: Annotated[bool, typer.Option("--timing", help="Also time plain, full and early-exit inference (timing.json).")] = False,
    timing_images: Annotated[int, typer.Option("--timing-images", min=1, help="Test images to time.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch for evaluation and batched timing.")] = 256,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads while timing (default: torch's); 1 is steadier on a busy machine.")
    ] = None,
):
    """Run every exit once over val and test: RUN/outputs.pt and RUN/eval.json (and RUN/timing.json)."""
    from repro import rundir, steps
    from repro.environment import select_device

    run_dir = rundir.open_run(run)
    resolved = str(select_device(device))
    summary = steps.evaluate_run(run_dir, batch_size=batch_size, device=resolved)
    console.print(exit_table(summary))
    say(f"wrote {run_dir.file(rundir.OUTPUTS)}, {run_dir.file(rundir.EVAL)}")
    if timing:
        result = steps.time_run(run_dir, n_images=timing_images, batch_size=batch_size, device=resolved, threads=threads)
        console.print(timing_table(result))
        say(f"wrote {run_dir.file(rundir.TIMING)}")


def exit_table(summary: dict):
    """Per-exit cost and accuracy, then the method's output and the operating point."""
    from rich.table import Table

    point = summary["operating_point"]
    table = Table(
        title=f"{summary['run']}: {summary['model']} / {summary['method']} / {summary['dataset']}",
        caption=f"operating point: {point['how']}",
    )
    for column in ("exit", "MACs (M)", "x plain", "val acc", "test acc", "test mean gate"):
        table.add_column(column, justify="right")
    plain = summary["plain_macs"]
    gates = summary["test"]["mean_gate"]
    for b, macs in enumerate(summary["exit_macs"]):
        table.add_row(
            str(b) if b < summary["num_exits"] - 1 else f"{b} (final)",
            f"{macs / 1e6:.2f}",
            f"{macs / plain:.3f}",
            f"{summary['val']['exit_accuracy'][b]:.2%}",
            f"{summary['test']['exit_accuracy'][b]:.2%}",
            f"{gates[b]:.3f}" if gates is not None and b < len(gates) else "",
        )
    table.add_section()
    table.add_row("method output", "", "", f"{summary['val']['method_accuracy']:.2%}", f"{summary['test']['method_accuracy']:.2%}", "")
    name = point["criterion"] or "final exit"
    table.add_row(
        f"early exit ({name})",
        f"{point['test']['mean_macs'] / 1e6:.2f}",
        f"{point['test']['mean_macs'] / plain:.3f}",
        f"{point['val']['accuracy']:.2%}",
        f"{point['test']['accuracy']:.2%}",
        f"{point['test']['macs_speedup']:.2f}x speed-up",
    )
    return table


def _stream_caption(stream: dict | None, size: int) -> str:
    """The stream's throughput and what it costs in waiting (a timing.json from before it has none)."""
    if not stream:
        return ""
    waited = stream["waited_batches"]
    return (f"; as a stream of {stream['input_batches']} batches (every segment on full batches of {size}) "
            f"{stream['speedup']:.2f}x, {waited['share_delayed']:.0%} of the images waiting, those "
            f"{waited['mean_delayed']:.1f} batches on average (p95 over all images {waited['p95']}, max {waited['max']})")


def timing_table(timing: dict):
    """Mean, median and p95 latency per image (ms) of each path, at batch 1 and in batches."""
    from rich.table import Table

    size = timing["batch_size"]
    table = Table(
        title=f"latency per image (ms) over {timing['n_images']} test images on {timing['device']}",
        caption=(
            f"measured speed-up {timing['measured_speedup']['batch1']:.2f}x (batch 1, mean latency; the median "
            f"image's {timing['measured_speedup']['batch1_median']:.2f}x), "
            f"{timing['measured_speedup']['batched']:.2f}x (batch {size}); "
            f"MAC-predicted {timing['macs_speedup']:.2f}x"
            + _stream_caption(timing.get("stream"), size)
        ),
    )
    table.add_column("path")
    for batch in ("batch 1", f"batch {size}"):
        for statistic in ("mean", "median", "p95"):
            table.add_column(f"{batch} {statistic}", justify="right")
    for name in ("plain", "full", "early_exit"):
        single, batched = timing["batch1"][name], timing["batched"][name]
        cells = [f"{single[key]:.3f}" for key in ("mean_ms", "median_ms", "p95_ms")]
        cells += [f"{batched[key]:.3f}" for key in ("mean_ms", "median_ms", "p95_ms")]
        table.add_row(name.replace("_", " "), *cells)
    return table
