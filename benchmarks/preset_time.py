"""Benchmark: `run --preset fast` against an earlier recipe of the fast network, back to back on this machine.

    python benchmarks/preset_time.py --data-dir ../shared/data/digit-recognizer \
        --before benchmarks/recipes/baseline.toml --repeats 2

Machines differ from day to day by more than the changes measured here, so the only figure that carries over is
a ratio of two times taken on one machine in one sitting. Each repeat runs the two commands as a user would, each
in a fresh process from reading the CSVs to writing the submission, alternating (before, now, before, now, ...)
so that a change of the machine's speed during the sitting falls on both. ``--before`` is the earlier recipe, a
recipe file of benchmarks/recipes.py (run as `run --model MODEL --config SETTINGS`); the preset is whatever
`--preset fast` is today. Appends one
JSON line per sitting to ``--results`` (each command's wall seconds, their medians and ratio, the validation
accuracy of each run, the machine and the commit) and prints it. The accuracy to compare recipes by is the
out-of-fold one of benchmarks/recipes.py; the validation accuracy here only shows that each run trained.
Nothing else should run meanwhile: the line records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from recipes import append_result, load_recipe

from digit_recognizer.rundir import METRICS_FILE


def timed_run(arguments: list[str], data_dir: Path, out: Path) -> tuple[float, float]:
    """Wall seconds of one `run` in a fresh process, and its validation accuracy."""
    command = [sys.executable, "-m", "digit_recognizer.cli", "run", *arguments, "--data-dir", str(data_dir),
               "--out", str(out), "--overwrite", "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, json.loads((out / METRICS_FILE).read_text())["val_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--before", type=Path, default=Path("benchmarks/recipes/baseline.toml"),
                        help="the earlier recipe (a recipe file of benchmarks/recipes.py)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command, alternating")
    parser.add_argument("--work", type=Path, default=Path("runs/preset-time"), help="where the runs are written")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/preset_time.jsonl"))
    args = parser.parse_args()

    before = load_recipe(args.before, "fast")
    args.work.mkdir(parents=True, exist_ok=True)
    settings = args.work / "before.json"
    settings.write_text(json.dumps(before.config.settings()), encoding="utf-8")
    commands = {"before": ["--model", before.model, "--config", str(settings)], "now": ["--preset", "fast"]}
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    accuracy: dict[str, list[float]] = {name: [] for name in commands}
    load_start = os.getloadavg()
    for repeat in range(args.repeats):
        for name, arguments in commands.items():
            wall, val = timed_run(arguments, args.data_dir, args.work / name)
            seconds[name].append(round(wall, 1))
            accuracy[name].append(round(val, 4))
            print(f"repeat {repeat + 1}/{args.repeats}: {name} {wall:.1f} s, val_accuracy {val:.4f}", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    line = {
        "benchmark": "preset_time", "before": str(args.before), "seconds": seconds, "median_seconds": medians,
        "ratio": round(medians["now"] / medians["before"], 3), "val_accuracy": accuracy,
        "load_start": list(load_start),
    }
    append_result(args.results, line)


if __name__ == "__main__":
    main()
