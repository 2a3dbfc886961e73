"""The end-to-end job: split, train, report and (optionally) write a submission, into one run directory.

A run directory holds:

- ``model.safetensors`` (a network) or ``model.skops`` (a scikit-learn pipeline), and ``config.json``;
- for networks, ``history.csv`` (epoch, loss, accuracy, val_loss, val_accuracy, lr, timing) and ``curves.png``;
- ``confusion_matrix.png`` and ``errors.png`` on the validation split;
- ``metrics.json``: val_accuracy, val_loss, epochs, train_seconds, device and throughput;
- ``submission.csv``: when a test set was given.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from .config import TrainConfig, default_config
from .data import Digits, split
from .ensemble import train_ensemble
from .evaluate import accuracy, confident_errors, log_loss
from .files import atomic_path, write_json
from .methods import NetClassifier, estimator_proba, load_model, make_estimator, save_model
from .plots import plot_confusion, plot_curves, plot_errors
from .predict import write_submission
from .train import resolve_device

SUBMISSION_FILE = "submission.csv"


def train_run(
    digits: Digits, out: str | Path, method: str = "cnn", cfg: TrainConfig | None = None, progress: bool = True,
    members: int = 1, folds: int = 1,
) -> dict:
    """Train ``method`` on a stratified split of ``digits``; write the model, figures and metrics to ``out``.

    ``cfg`` is the training config of a network method (default: the method's own); for a classic method only
    its ``val_fraction`` and ``seed`` (the split) are used. ``members`` > 1 or ``folds`` > 1 train an ensemble
    instead (:func:`ensemble_run`). Returns the metrics, also in ``out/metrics.json``.
    """
    if members != 1 or folds != 1:
        return ensemble_run(digits, out, method, cfg, members, folds, progress)
    out = Path(out)
    cfg = cfg or default_config(method) or TrainConfig()
    cfg.validate()
    train, val = split(digits, cfg.val_fraction, cfg.seed)
    estimator = make_estimator(method, cfg, progress=progress)
    started = time.perf_counter()
    if isinstance(estimator, NetClassifier):
        # As in the seed kernel, the validation split drives the learning-rate schedule and is reported.
        estimator.fit(train.images, train.labels, val.images, val.labels)
    else:
        estimator.fit(train.images, train.labels)
    train_seconds = time.perf_counter() - started
    save_model(estimator, out, method)

    proba = estimator_proba(estimator, val.images)
    plot_confusion(val.labels, proba.argmax(1), out / "confusion_matrix.png",
                   f"{method}: validation set ({len(val):,} images), accuracy {accuracy(proba, val.labels):.4f}")
    plot_errors(val.images, val.labels, proba, confident_errors(proba, val.labels), out / "errors.png")
    metrics = {
        "model": method,
        "val_accuracy": accuracy(proba, val.labels),
        "val_loss": log_loss(proba, val.labels),
        "train_seconds": round(train_seconds, 2),
        "device": "cpu",
        "n_train": len(train),
        "n_val": len(val),
    }
    if isinstance(estimator, NetClassifier):
        history = estimator.history_
        with atomic_path(out / "history.csv") as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        plot_curves(history, out / "curves.png")
        epoch_seconds = sum(row["seconds"] for row in history)
        metrics.update({
            "epochs": len(history),
            "seconds_per_epoch": round(epoch_seconds / len(history), 2),
            "train_images_per_second": round(len(train) * len(history) / epoch_seconds, 1),
            "device": str(resolve_device(cfg.device)),
            "arch": cfg.arch,
        })
    write_json(metrics, out / "metrics.json")
    return metrics


def ensemble_run(
    digits: Digits, out: str | Path, method: str = "cnn", cfg: TrainConfig | None = None, members: int = 3,
    folds: int = 1, progress: bool = True,
) -> dict:
    """Train an ensemble of a network method (see :mod:`digit_recognizer.ensemble`) and write its figures:
    the confusion matrix of the ensemble with test-time augmentation on the held-out rows, and the digits it
    still gets wrong there."""
    out = Path(out)
    cfg = cfg or default_config(method)
    if cfg is None:
        raise ValueError(f"ensembles are made of networks; '{method}' is not one")
    metrics, proba, scored = train_ensemble(cfg, digits, out, members=members, folds=folds, progress=progress)
    labels, proba = digits.labels[scored], proba[scored]
    ensemble = f"ensemble of {members} + TTA"
    plot_confusion(labels, proba.argmax(1), out / "confusion_matrix.png",
                   f"{ensemble}, {metrics['estimate']} ({len(labels):,} images): "
                   f"accuracy {accuracy(proba, labels):.4f}")
    plot_errors(digits.images[scored], labels, proba, confident_errors(proba, labels, k=18), out / "errors.png",
                title=f"Digits the {ensemble} still gets wrong")
    return metrics


def run(
    train: Digits, test: Digits, out: str | Path, method: str = "cnn", cfg: TrainConfig | None = None,
    progress: bool = True, members: int = 1, folds: int = 1, tta: bool = False,
) -> dict:
    """:func:`train_run`, then predict ``test`` with the saved model(s) and write ``out/submission.csv``."""
    metrics = train_run(train, out, method, cfg, progress, members, folds)
    model = load_model(out, device=cfg.device if cfg else "auto", tta=tta)
    write_submission(estimator_proba(model, test.images).argmax(1), Path(out) / SUBMISSION_FILE)
    return metrics
