"""Does the process's memory set-up move `repro eval --timing`'s batched figure? Issue 28, seed 0.

The batched speed-up of the same checkpoint moves 5-10% between processes (benchmarks/results/
profile_early_exit.md), mostly through the plain network's own time. Two process-wide settings decide how a
batch's fresh activations are served, and so how often their pages fault:
- `default`: glibc's malloc as it comes (its mmap threshold rises with what the process freed before);
- `glibc-fixed`: glibc's mmap threshold fixed at 32 MiB (glibc's largest) and its trimming off
  (GLIBC_TUNABLES), so buffers under 32 MiB are reused from the heap whatever the process did first (the
  timed paths run on CPU in pieces whose activations stay under 8 MB; `full` alone makes larger ones);
- `thp`: PyTorch's own switch THP_MEM_ALLOC_ENABLE=1, tensors of 2 MB or more on transparent huge pages
  (where the kernel allows them on request: /sys/kernel/mm/transparent_hugepage/enabled).

Each pass is one `repro eval RUN --timing` in a fresh process under one condition, the conditions
interleaved pass by pass so that drifts of the machine hit all alike; each pass's timing.json is kept
(OUT/<condition>-<pass>.json, with the condition's environment written in) and the summary (OUT/summary.md,
.json, rewritten after every pass) covers every pass file in OUT, so passes of an earlier call are counted too. Each pass rewrites RUN/timing.json (the last pass's stays there).
Pause other work first: this times the machine.

    python benchmarks/timing_conditions.py runs/retrained-cpu/bnet-cifar10-jpeg --passes 2 --threads 2

Writes benchmarks/results/timing_conditions_<run name>/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONDITIONS = {
    "default": {},
    "glibc-fixed": {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
}
PASS_FILE = re.compile(r"^(?P<condition>[a-z-]+)-(?P<number>\d+)\.json$")


def _cleared(key: str) -> bool:
    """Variables that would set malloc or huge pages for every condition alike: `default` is the defaults."""
    return key in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE") or key.startswith("MALLOC_")


def pass_files(out: Path, condition: str | None = None) -> list[Path]:
    """OUT's pass files (of one condition), in name order; summary files and other JSON are not passes."""
    found = []
    for path in sorted(out.glob("*.json")):
        match = PASS_FILE.match(path.name)
        if match and match["condition"] in CONDITIONS and condition in (None, match["condition"]):
            found.append(path)
    return found


def next_number(out: Path, condition: str) -> int:
    """One past the highest pass number of `condition` in OUT, so that no pass file is ever overwritten."""
    return 1 + max((int(PASS_FILE.match(p.name)["number"]) for p in pass_files(out, condition)), default=0)


def one_pass(run: Path, condition: str, threads: int, target: Path) -> None:
    """`repro eval RUN --timing` in a fresh process under `condition`; its timing.json, with the condition's
    environment added, written to target."""
    env = {key: value for key, value in os.environ.items() if not _cleared(key)} | CONDITIONS[condition]
    command = [sys.executable, "-m", "repro", "eval", str(run), "--timing", "--threads", str(threads)]
    timing = run / "timing.json"
    before = timing.stat().st_mtime_ns if timing.exists() else None
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise SystemExit(f"repro eval failed under {condition} (exit {done.returncode}): {said[-1] if said else 'no output'}")
    if not timing.exists() or timing.stat().st_mtime_ns == before:
        raise SystemExit(f"repro eval under {condition} wrote no new {timing}")
    body = json.loads(timing.read_text())
    body["timing_condition"] = {"name": condition, "environment": CONDITIONS[condition]}
    target.write_text(json.dumps(body, indent=2) + "\n")


def row(path: Path) -> dict:
    timing = json.loads(path.read_text())
    return {
        "pass": path.stem,
        "condition": PASS_FILE.match(path.name)["condition"],
        "plain_ms": timing["batched"]["plain"]["ms_per_image"],
        "early_exit_ms": timing["batched"]["early_exit"]["ms_per_image"],
        "batched": timing["measured_over_predicted"]["batched"],
        "batched_rounds": [r / timing["macs_speedup"] for r in timing["measured_speedup"]["batched_rounds"]],
        "stream": timing["stream"]["over_predicted"],
        "batch1": timing["measured_over_predicted"]["batch1"],
        "macs_speedup": timing["macs_speedup"],
        "load_average_1min": timing.get("load_average_1min"),
    }


def summarise(out: Path) -> dict:
    rows = [row(path) for path in pass_files(out)]
    conditions = {}
    for name in CONDITIONS:
        mine = [r for r in rows if r["condition"] == name]
        if mine:
            conditions[name] = {"passes": len(mine), **{
                key: {"mean": statistics.fmean(r[key] for r in mine), "min": min(r[key] for r in mine),
                      "max": max(r[key] for r in mine)}
                for key in ("plain_ms", "early_exit_ms", "batched", "stream", "batch1")}}
    summary = {"passes": rows, "conditions": conditions}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "| condition | passes | plain ms/image (batch 256) | early exit ms/image | batched / MACs (mean, range) "
        "| stream / MACs | batch 1 / MACs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, c in conditions.items():
        def span(key, digits=3):
            return f"{c[key]['mean']:.{digits}f} ({c[key]['min']:.{digits}f}-{c[key]['max']:.{digits}f})"
        lines.append(f"| {name} | {c['passes']} | {span('plain_ms')} | {span('early_exit_ms')} | {span('batched')} "
                     f"| {span('stream')} | {span('batch1', 2)} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def main(args) -> None:
    run = Path(args.run)
    if not (run / "checkpoint.pt").is_file():
        raise SystemExit(f"{run} has no checkpoint.pt to time")
    out = Path(args.out) if args.out else RESULTS / f"timing_conditions_{run.name}"
    out.mkdir(parents=True, exist_ok=True)
    for condition in args.conditions:
        if condition not in CONDITIONS:
            raise SystemExit(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    if os.environ.get("LD_PRELOAD"):
        raise SystemExit("LD_PRELOAD is set: unset it, these conditions compare glibc's own malloc")
    for _ in range(args.passes):
        for condition in args.conditions:
            target = out / f"{condition}-{next_number(out, condition)}.json"
            one_pass(run, condition, args.threads, target)
            summarise(out)  # after every pass: a stop part-way leaves a summary of what was timed
            print(f"{target.stem}: batched / MACs {row(target)['batched']:.3f}")
    print((out / "summary.md").read_text() if summarise(out)["conditions"] else "no passes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory with checkpoint.pt and eval.json")
    parser.add_argument("--passes", type=int, default=2, help="passes per condition")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    parser.add_argument("--out", default=None)
    main(parser.parse_args())
