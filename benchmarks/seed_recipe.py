"""Benchmark: the seed kernel's full recipe on the full Kaggle training data.

Runs ``digit_recognizer.run`` (30 epochs, batch 86, RMSprop, augmentation, 10 % validation split) on
train.csv(.gz) / test.csv(.gz) and records validation accuracy, seconds per epoch and total time.

    python benchmarks/seed_recipe.py --data-dir ../shared/data/digit-recognizer --out runs/seed-full

Writes ``<out>/benchmark.json`` beside the usual run outputs. Flags after ``--`` go to the training config
(``-- --epochs 5`` for a shorter check).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from digit_recognizer.config import TrainConfig
from digit_recognizer.data import find_csv, read_test, read_train
from digit_recognizer.files import write_json
from digit_recognizer.runs import run


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--out", type=Path, default=Path("runs/seed-full"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    train = read_train(find_csv(args.data_dir, "train"))
    test = read_test(find_csv(args.data_dir, "test"))
    load_seconds = time.perf_counter() - started

    cfg = TrainConfig(epochs=args.epochs, device=args.device)
    metrics = run(train, test, args.out, "cnn", cfg, progress=not args.quiet)
    total_seconds = time.perf_counter() - started
    history = pd.read_csv(args.out / "history.csv")

    result = {
        "benchmark": "seed recipe, full train.csv",
        "val_accuracy": metrics["val_accuracy"],
        "val_loss": metrics["val_loss"],
        "epochs": metrics["epochs"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        # The median is robust to an epoch slowed by another process on the machine.
        "median_seconds_per_epoch": round(statistics.median(history["seconds"]), 2),
        "train_images_per_second": metrics["train_images_per_second"],
        "train_seconds": metrics["train_seconds"],
        "load_seconds": round(load_seconds, 2),
        "total_seconds": round(total_seconds, 2),
        "n_train": metrics["n_train"],
        "n_val": metrics["n_val"],
        "n_test": len(test),
        "device": metrics["device"],
        "machine": machine(),
        "config": cfg.to_dict(),
    }
    write_json(result, args.out / "benchmark.json")
    print(f"val_accuracy {result['val_accuracy']:.4f}  {result['seconds_per_epoch']:.1f} s/epoch  "
          f"total {result['total_seconds']:.0f} s  -> {args.out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
