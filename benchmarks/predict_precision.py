"""Benchmark: a finished K-fold run's networks predicting in float32 and in bfloat16 on a CPU, for the same errors?

    python benchmarks/predict_precision.py runs/ensemble --data-dir ../shared/data/digit-recognizer \
        [--results benchmarks/results/predict_precision.jsonl]

Every network of the run predicts its held-out rows and the competition's test images as the ensemble preset does
(its own probabilities and, for the digits it is unsure of, test-time augmentation, in one pass), once in each
arithmetic. Printed: the out-of-fold errors of the networks' average in each, how many of the test images change
label, and the seconds each took (time it with nothing else running). bfloat16 pays only where the CPU computes it
natively (AVX512-BF16 or AMX); elsewhere PyTorch emulates it, slowly. Nothing is trained.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from recipes import append_result

from digit_recognizer.audit import read_run
from digit_recognizer.data import find_csv, read_test, read_train
from digit_recognizer.evaluate import network_proba_and_tta
from digit_recognizer.hardware import cpu_has_bf16
from digit_recognizer.loading import load_model
from digit_recognizer.rundir import RunDir, read_trained_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, metavar="RUN_DIR", help="a finished K-fold run (run/train --folds K)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--results", type=Path, help="also append the figures as one JSON line here")
    args = parser.parse_args()
    run = read_run(args.run)
    train, test = read_train(find_csv(args.data_dir, "train")), read_test(find_csv(args.data_dir, "test"))
    jobs = [job for job, _ in read_trained_records(run, train, "train.csv")]  # every record checked first
    networks = [load_model(RunDir(run.path).job_dir(job.name)).network_ for job in jobs]

    # Each arithmetic's first pass builds its kernels: warm both up, so that neither timing pays for that.
    for precision in ("fp32", "bf16"):
        network_proba_and_tta(networks[0], test.images[:2048], "cpu", precision)
    figures = {}
    for precision in ("fp32", "bf16"):
        oof, oof_tta = (np.zeros((len(train.labels), 10)) for _ in range(2))
        test_tta = np.zeros((len(test.images), 10))
        started = time.perf_counter()
        for job, network in zip(jobs, networks, strict=True):
            plain, tta = network_proba_and_tta(network, train.images[job.scored_rows], "cpu", precision)
            oof[job.scored_rows] += plain
            oof_tta[job.scored_rows] += tta
            test_tta += network_proba_and_tta(network, test.images, "cpu", precision)[1]
        figures[precision] = {"errors": int((oof.argmax(1) != train.labels).sum()),
                              "errors_tta": int((oof_tta.argmax(1) != train.labels).sum()),
                              "seconds": round(time.perf_counter() - started, 1), "test_labels": test_tta.argmax(1)}
        print(f"{precision}: out-of-fold errors {figures[precision]['errors']} "
              f"({figures[precision]['errors_tta']} with TTA), {figures[precision]['seconds']} s")
    changed = int((figures["fp32"].pop("test_labels") != figures["bf16"].pop("test_labels")).sum())
    print(f"test images whose label changes: {changed} of {len(test.images):,}; bfloat16 "
          f"{figures['fp32']['seconds'] / figures['bf16']['seconds']:.2f}x as fast")
    if args.results:
        append_result(args.results, {"benchmark": "predict_precision", "run": args.run.name, "networks": len(networks),
                                     "cpu_has_bf16": cpu_has_bf16(), **figures, "test_labels_changed": changed})


if __name__ == "__main__":
    main()
