"""Benchmark: how much finished networks differ, and what averaging them buys, out of fold.

    python benchmarks/diversity.py runs/recipes/baseline-seed0 runs/recipes/dirac-seed0 ... \
        --data-dir ../shared/data/digit-recognizer [--tta] [--results benchmarks/results/diversity.jsonl]

Each argument is a finished K-fold run directory (``run``/``train --folds K``, or one of the recipe harness's);
every training row has, from each run, the probabilities of the network(s) that never trained on it. For the
runs given, the benchmark prints each run's out-of-fold errors, the errors of their average, and for every pair
how many rows both get wrong against how many they would share if their mistakes were independent
(``a * b / rows``): diversity measured, not assumed. Runs on different seeds have different folds, which does not
matter: each row's probabilities still come from networks that never saw it. Nothing is trained.
"""

from __future__ import annotations

import argparse
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from digit_recognizer.audit import read_run
from digit_recognizer.data import find_csv, read_train
from digit_recognizer.evaluate import shared_errors
from digit_recognizer.rundir import read_trained_records


def out_of_fold(path: Path, train, tta: bool) -> np.ndarray:
    """The run's out-of-fold probabilities of every training row (mean over its members), each record checked."""
    run = read_run(path)
    proba = np.zeros((run.members, len(train.labels), 10), dtype=np.float32)
    for i, (_, record) in enumerate(read_trained_records(run, train, "train.csv")):  # member by member, fold by fold
        proba[i // run.folds, record.scored_rows] = record.proba_tta if tta else record.proba
    return proba.mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished K-fold run directories")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--tta", action="store_true", help="the probabilities with test-time augmentation")
    parser.add_argument("--results", type=Path, help="also append the figures as one JSON line here")
    args = parser.parse_args()
    if len(args.runs) < 2:
        parser.error("give at least two runs: diversity is between networks")
    train = read_train(find_csv(args.data_dir, "train"))
    names = [path.name for path in args.runs]
    probas = [out_of_fold(path, train, args.tta) for path in args.runs]
    shared = shared_errors(probas, train.labels)
    rows, average = shared.rows, shared.average
    every, any_ = shared.wrong_in_all, shared.wrong_in_any
    pairs = {f"{names[i]} & {names[j]}": {"both": shared.both[i][j],
                                          "if_independent": round(shared.if_independent(i, j), 2)}
             for i, j in itertools.combinations(range(len(names)), 2)}
    members = dict(zip(names, shared.errors, strict=True))
    print(f"out-of-fold errors{' with TTA' if args.tta else ''} on {rows:,} rows")
    for name, errors in members.items():
        print(f"  {name}: {errors}")
    print(f"  mean of the runs: {np.mean(list(members.values())):.1f}; their average: {average}; "
          f"wrong in every run: {every}; in at least one: {any_}")
    for pair, counts in pairs.items():
        print(f"  both wrong, {pair}: {counts['both']} (independent mistakes would share {counts['if_independent']})")
    if args.results:
        line = {"benchmark": "diversity", "tta": args.tta, "rows": rows, "errors": members, "average": average,
                "wrong_in_every_run": every, "wrong_in_any_run": any_, "pairs": pairs,
                "time": datetime.now(UTC).isoformat(timespec="seconds")}
        with args.results.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
