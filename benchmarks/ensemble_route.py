"""Benchmark: the README's ensemble route on the competition's data, each command timed in a fresh process:
`run --preset ensemble` (the teachers, scored out of fold), then `distill` of it into one fast network.

    python benchmarks/ensemble_route.py --data-dir ../shared/data/digit-recognizer --out runs/route

The issue's targets are read from the line it appends to ``--results``: the ensemble's out-of-fold errors with
TTA (its submission's) and its wall seconds, the student's out-of-fold errors (one pass and with TTA). The line
also holds each member's errors and how many they share, the machine, the commit and the load averages before and
after: nothing else should run meanwhile. ``--teacher RUN`` distils a finished ensemble instead of training one
(its seconds are then not in the line); ``--student-epochs`` sets the student's epochs (default: its recipe's).
``--out`` must not exist: a resumed run would not be a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from recipes import append_result

from digit_recognizer.rundir import METRICS_FILE


def timed(command: list[str], out: Path) -> tuple[float, dict]:
    """Wall seconds of one command of the package in a fresh process, and the metrics it wrote."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "digit_recognizer.cli", *command, "--out", str(out), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return round(seconds, 1), json.loads((out / METRICS_FILE).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--out", type=Path, default=Path("runs/route"), help="a new folder for the runs")
    parser.add_argument("--teacher", type=Path, help="a finished ensemble to distil instead of training one")
    parser.add_argument("--student-epochs", type=int, help="the student's epochs (default: its recipe's)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/ensemble_route.jsonl"))
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out} exists; the benchmark times fresh runs only")

    line: dict = {"benchmark": "ensemble_route", "load_start": list(os.getloadavg())}
    data = ["--data-dir", str(args.data_dir)]
    teacher = args.teacher
    if teacher is None:
        teacher = args.out / "ensemble"
        seconds, metrics = timed(["run", "--preset", "ensemble", *data], teacher)
        members, ensemble = metrics["table"][:-1], metrics["table"][-1]
        line["ensemble"] = {
            "command": "run --preset ensemble", "wall_seconds": seconds, "members": metrics["members"],
            "folds": metrics["folds"], "errors": ensemble["errors"], "errors_tta": ensemble["errors_tta"],
            "member_errors": [m["errors"] for m in members], "member_errors_tta": [m["errors_tta"] for m in members],
            "shared_errors": metrics.get("shared_errors"),
        }
        print(f"ensemble: {seconds:.0f} s, {line['ensemble']['errors']} errors out of fold, "
              f"{line['ensemble']['errors_tta']} with TTA", flush=True)
    epochs = ["--epochs", str(args.student_epochs)] if args.student_epochs else []
    seconds, metrics = timed(["distill", "--teacher", str(teacher), *epochs, *data], args.out / "student")
    line["student"] = {
        "command": "distill" + (f" --epochs {args.student_epochs}" if epochs else ""), "teacher": str(teacher),
        "wall_seconds": seconds, "model": metrics["model"], "epochs": metrics["epochs"],
        "temperature": metrics["temperature"], "errors": metrics["errors"], "errors_tta": metrics["errors_tta"],
        "teacher_errors": metrics["teacher_errors"],
    }
    print(f"student: {seconds:.0f} s, {metrics['errors']} errors out of fold, {metrics['errors_tta']} with TTA",
          flush=True)
    append_result(args.results, line)


if __name__ == "__main__":
    main()
