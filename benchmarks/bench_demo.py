"""How long does `repro demo` take, and does its early exit pay in wall-clock time? (not a test)

Runs the demo (repro.demo.run_demo, its defaults) `--repeats` times in a temporary folder on this machine
and reports the wall time of each run and per step, and, per method, the MAC speed-up at its operating
point beside the measured speed-up at batch 1 and batched (timing.json; goal: above 1 for every method
whose MAC speed-up is above 1.3). The README and `repro demo --help` quote these figures.

    python benchmarks/bench_demo.py            # writes benchmarks/results/bench_demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from repro.demo import DemoConfig, run_demo
from repro.environment import describe_machine

RESULTS = Path(__file__).resolve().parent / "results" / "bench_demo.json"


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            config = DemoConfig(runs=Path(folder) / "runs", out=Path(folder) / "report")
            start = time.perf_counter()
            result = run_demo(config)
            seconds = time.perf_counter() - start
            methods = {}
            for path in result.runs:
                timing = json.loads((path / "timing.json").read_text())
                evaluation = json.loads((path / "eval.json").read_text())
                methods[evaluation["method"]] = {
                    "final_exit_accuracy": evaluation["test"]["final_accuracy"],
                    "operating_point_accuracy": evaluation["operating_point"]["test"]["accuracy"],
                    "macs_speedup": timing["macs_speedup"],
                    "measured_speedup_batch1": timing["measured_speedup"]["batch1"],
                    "measured_speedup_batched": timing["measured_speedup"]["batched"],
                    "batch1_spread": timing["measured_speedup"]["batch1_spread"],
                }
        runs.append({"seconds": seconds, "steps": result.seconds, "methods": methods})
        print(f"demo {repeat + 1}: {seconds:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in result.seconds.items())})")
        for name, m in methods.items():
            goal = "" if m["macs_speedup"] <= 1.3 else ("  ok" if min(m["measured_speedup_batch1"], m["measured_speedup_batched"]) > 1 else "  BELOW 1")
            print(f"  {name:>15}: MACs x{m['macs_speedup']:.2f}, measured x{m['measured_speedup_batch1']:.2f} (batch 1), "
                  f"x{m['measured_speedup_batched']:.2f} (batched){goal}")
    result = {
        "machine": describe_machine(),
        "demo": {k: str(v) for k, v in vars(DemoConfig()).items()},
        "runs": runs,
        "median_seconds": statistics.median(run["seconds"] for run in runs),
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median {result['median_seconds']:.0f} s; load average {result['load_average_1min_before_after']}; wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
