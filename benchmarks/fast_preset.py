"""Benchmark: the fast preset end to end, and prediction of the test rows, as a user runs them.

    python benchmarks/fast_preset.py --data-dir ../shared/data/digit-recognizer --out runs/fast-bench

1. ``digit-recognizer run --preset fast`` in a fresh process, timed from start to exit: reading the CSVs,
   training, figures, and the submission are all included.
2. ``digit-recognizer predict`` on test.csv (28,000 rows) with that run, timed the same way (process start,
   imports, loading the model and the CSV included), with the PyTorch model and, through ``--onnx``, with
   ONNX Runtime.
3. Seconds to reach 99.5 % and 99.6 % validation accuracy, read from the run's history (training time only).

Writes ``<out>/fast_preset.json`` and ``<out>/fast_preset.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from digit_recognizer.data import find_csv


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def seconds_to(history: pd.DataFrame, target: float) -> float | None:
    reached = history.index[history["val_accuracy"] >= target]
    return None if len(reached) == 0 else round(float(history["seconds"].loc[: reached[0]].sum()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--out", type=Path, default=Path("runs/fast-bench"))
    parser.add_argument("--repeats", type=int, default=3, help="prediction timings to take the median of")
    args = parser.parse_args()

    cli = [sys.executable, "-m", "digit_recognizer.cli"]
    run_dir = args.out / "run"
    test = find_csv(args.data_dir, "test")
    run_seconds = timed([*cli, "run", "--preset", "fast", "--data-dir", str(args.data_dir), "--out", str(run_dir),
                         "--quiet"])
    onnx = args.out / "fast.onnx"
    subprocess.run([*cli, "export", "--model", str(run_dir), "--onnx", str(onnx)], check=True,
                   stderr=subprocess.DEVNULL)
    predict = {}
    for name, source in (("pytorch", ["--model", str(run_dir)]), ("onnxruntime", ["--onnx", str(onnx)])):
        times = sorted(timed([*cli, "predict", *source, "--test", str(test), "--out", str(args.out / f"{name}.csv")])
                       for _ in range(args.repeats))
        predict[name] = round(times[len(times) // 2], 2)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    result = {
        "run_preset_fast_wall_seconds": round(run_seconds, 1),
        "val_accuracy": round(metrics["val_accuracy"], 4),
        "epochs": metrics["epochs"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "train_images_per_second": metrics["train_images_per_second"],
        "train_seconds_to_99.5": seconds_to(history, 0.995),
        "train_seconds_to_99.6": seconds_to(history, 0.996),
        "predict_28000_wall_seconds": predict,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fast_preset.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items())
    (args.out / "fast_preset.md").write_text(f"| measure | value |\n| --- | --- |\n{rows}\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
