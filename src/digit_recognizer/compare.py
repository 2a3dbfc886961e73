"""Compare methods on the same data and the same split (or the same K folds).

Writes ``comparison.csv`` (model, accuracy, accuracy_std, fit_seconds, predict_seconds, settings),
``comparison.png`` and, when a test set is given, ``submissions/<model>.csv``. With K folds the accuracy is the
mean over the folds' held-out parts and the submission averages the K fold models' probabilities.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.preprocessing import FunctionTransformer
from tqdm.auto import tqdm

from .config import check_method
from .data import Digits, split_indices
from .evaluate import accuracy
from .files import atomic_path
from .methods import METHODS, NetClassifier, estimator_proba, make_estimator
from .plots import plot_comparison
from .predict import write_submission


def describe(estimator: BaseEstimator) -> str:
    """The settings that define a fitted method, short enough for a table cell."""
    if isinstance(estimator, NetClassifier):
        cfg = estimator.config
        return (f"{cfg.arch} network, {cfg.epochs} epochs, {cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch_size}, "
                f"augment {'on' if cfg.augment else 'off'}")
    steps = [step for _, step in getattr(estimator, "steps", [(None, estimator)])]
    return " -> ".join(repr(step) for step in steps if not isinstance(step, FunctionTransformer))


def compare(
    train: Digits,
    out: str | Path,
    models: list[str] | None = None,
    test: Digits | None = None,
    folds: int = 1,
    val_fraction: float = 0.1,
    seed: int = 2,
    progress: bool = True,
) -> pd.DataFrame:
    """Fit each method on the same split(s) of ``train``, score it on the held-out part, write the outputs."""
    models = models or list(METHODS)
    for name in models:
        check_method(name)
    out = Path(out)
    pairs = split_indices(train.labels, folds, val_fraction, seed)
    rows = []
    bar = tqdm(models, desc="compare", unit="model", disable=not progress)
    for name in bar:
        scores, fit_seconds, predict_seconds, settings = [], [], [], ""
        test_proba = None
        for k, (tr, va) in enumerate(pairs, start=1):
            bar.set_description(f"compare: {name}" + (f" fold {k}/{len(pairs)}" if len(pairs) > 1 else ""))
            estimator = make_estimator(name, progress=progress)  # networks show their epochs and batches
            started = time.perf_counter()
            estimator.fit(train.images[tr], train.labels[tr])
            fit_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            proba = estimator_proba(estimator, train.images[va])
            predict_seconds.append(time.perf_counter() - started)
            scores.append(accuracy(proba, train.labels[va]))
            settings = describe(estimator)
            if test is not None:
                fold_proba = estimator_proba(estimator, test.images) / len(pairs)
                test_proba = fold_proba if test_proba is None else test_proba + fold_proba
        rows.append({
            "model": name,
            "accuracy": float(np.mean(scores)),
            "accuracy_std": float(np.std(scores)),
            "fit_seconds": round(float(np.mean(fit_seconds)), 2),
            "predict_seconds": round(float(np.mean(predict_seconds)), 3),
            "n_train": len(pairs[0][0]),
            "n_val": len(pairs[0][1]),
            "folds": len(pairs),
            "settings": settings,
        })
        if progress:
            tqdm.write(f"{name:>8}  accuracy {rows[-1]['accuracy']:.4f}  fit {rows[-1]['fit_seconds']:.1f}s  "
                       f"predict {rows[-1]['predict_seconds']:.2f}s")
        if test_proba is not None:
            write_submission(test_proba.argmax(1), out / "submissions" / f"{name}.csv")

    table = pd.DataFrame(rows)
    with atomic_path(out / "comparison.csv") as tmp:
        table.to_csv(tmp, index=False)
    plot_comparison(table, out / "comparison.png")
    return table
