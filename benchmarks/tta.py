"""Benchmark: test-time augmentation by translation, several sets of shifts, scored out of fold on finished runs.

    python benchmarks/tta.py runs/recipes/baseline-seed0 runs/recipes/baseline-seed1 \
        --data-dir ../shared/data/digit-recognizer --results benchmarks/results/tta_oof.jsonl

Each run directory is a finished K-fold run (``run``/``train --folds K``, or the recipe harness's). Every job's
network predicts the fold it never trained on once per set of shifts below, so each set's out-of-fold errors over
all training rows come from the same networks and folds: the differences are paired. ``cross1_unsure`` is the
project's ``--tta``: the cross, for the images whose top probability is below ``evaluate.TTA_UNSURE`` only. The
seconds are those of one network predicting the 28,000 test images with the set (the time a submission pays), in
this process with torch's threads; the line records the load average. Appends one JSON line per run directory
and set; ``--sets`` chooses the sets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from recipes import git_state
from seed_recipe import machine

from digit_recognizer.audit import read_run
from digit_recognizer.data import find_csv, read_test, read_train
from digit_recognizer.evaluate import TTA_SHIFTS, TTA_UNSURE, network_proba
from digit_recognizer.loading import load_model
from digit_recognizer.rundir import RunDir, read_trained_records

# Whole-pixel shifts (down, right), each set starting with the image itself, and the top probability below which an
# image is shifted (None: every image).
SHIFT_SETS = {
    "none": ([(0, 0)], None),
    "cross1": (list(TTA_SHIFTS), None),
    "cross1_unsure": (list(TTA_SHIFTS), TTA_UNSURE),  # the project's --tta
    "square1": ([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], None),
    "cross2": ([*TTA_SHIFTS, (2, 0), (-2, 0), (0, 2), (0, -2)], None),
}


def score(run_path: Path, train, test, results: Path, sets: list[str]) -> None:
    run = read_run(run_path)  # a K-fold run, checked
    jobs = [job for job, _ in read_trained_records(run, train, "train.csv")]  # finished, on this data
    networks = [load_model(RunDir(run_path).job_dir(job.name)).network_ for job in jobs]
    info, state = machine(), git_state()
    for name in sets:
        shifts, unsure_below = SHIFT_SETS[name]
        load_start = os.getloadavg()
        proba = np.zeros((run.members, len(train.labels), 10), dtype=np.float32)
        for i, (job, network) in enumerate(zip(jobs, networks, strict=True)):
            proba[i // run.folds, job.scored_rows] = network_proba(
                network, train.images[job.scored_rows], tta=True, shifts=shifts, unsure_below=unsure_below)
        errors = int((proba.mean(0).argmax(1) != train.labels).sum())
        started = time.perf_counter()
        network_proba(networks[0], test.images, tta=True, shifts=shifts, unsure_below=unsure_below)
        seconds = time.perf_counter() - started
        line = {"benchmark": "tta", "run": run_path.name, "shifts": name, "copies": len(shifts),
                "unsure_below": unsure_below, "errors": errors,
                "rows": len(train.labels), "predict_test_seconds": round(seconds, 2), "test_rows": len(test.images),
                "load_start": list(load_start), "load_end": list(os.getloadavg()), "machine": info, "git": state,
                "time": datetime.now(UTC).isoformat(timespec="seconds")}
        with results.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        print(f"tta: {run_path.name} {name} ({len(shifts)} copies): {errors} errors out of fold; "
              f"{seconds:.1f} s for {len(test.images):,} test images with one network", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished K-fold run directories")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/tta_oof.jsonl"))
    parser.add_argument("--sets", default=",".join(SHIFT_SETS),
                        help=f"comma-separated sets of shifts to score (default: all of {', '.join(SHIFT_SETS)})")
    args = parser.parse_args()
    sets = args.sets.split(",")
    if unknown := [name for name in sets if name not in SHIFT_SETS]:
        parser.error(f"--sets: unknown set '{unknown[0]}'; known: {', '.join(SHIFT_SETS)}")
    train = read_train(find_csv(args.data_dir, "train"))
    test = read_test(find_csv(args.data_dir, "test"))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for run_path in args.runs:
        score(run_path, train, test, args.results, sets)


if __name__ == "__main__":
    main()
