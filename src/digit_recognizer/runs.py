"""The end-to-end runs: a single run, an ensemble, a comparison, each into one run directory.

Each plans its training jobs (:mod:`digit_recognizer.jobs`), starts or resumes the run directory
(:mod:`digit_recognizer.rundir`), runs the unfinished jobs here or on a cluster (:mod:`digit_recognizer.execute`),
and then reports from the jobs' records: metrics, figures, ``report.html``, and a submission when a test set is
given.

- A single run trains on a stratified split and reports its validation accuracy (the split steers the
  learning-rate schedule, as in the seed kernel).
- An ensemble trains ``members`` networks (on each of ``folds`` folds) and reports each member's and the
  average's accuracy on rows none of them trained on: out of fold on every row with K folds.
- A comparison fits each method on the same split (or the same folds) and tabulates accuracy and time.

A single run or an ensemble can leave rows out of training (``exclude_rows``, ``--exclude-rows``): they leave every
training part and stay in every scored part, so that the scores still cover them.

A single run or an ensemble can be the second stage of another (``pseudo_labels``, ``--pseudo-labels RUN``): each job
also trains on the test images that the finished run's networks label with confidence, those digits as their labels
(:func:`~digit_recognizer.jobs.with_pseudo_labels`). With K folds, the job of fold k takes them only from the
networks of the finished run's fold k, which never trained on the rows it is scored on; so the folds must be the
same (:func:`pseudo_labelled`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import tensorboard as events
from .config import METHOD_NAMES, METHODS, TrainConfig, check_method, choose, method_config
from .data import Digits
from .errors import RunDirError, UsageError
from .evaluate import accuracy, confident_errors, log_loss, shared_errors
from .execute import Executor, InProcess, run_jobs
from .jobs import Job, JobRecord, compare_jobs, excluded_rows, plan_jobs, with_pseudo_labels
from .loading import load_model
from .methods import estimator_proba, make_estimator
from .plots import plot_comparison, plot_confusion, plot_curves, plot_errors, plot_member_curves
from .predict import TorchPredictor
from .report import render_report
from .rundir import (
    COMPARISON_FIGURE,
    COMPARISON_TABLE,
    CONFUSION_FILE,
    CURVES_FILE,
    ERRORS_FILE,
    SUBMISSION_FILE,
    RunDir,
    TrainedRun,
    digest,
    manifest,
    read_trained_records,
    read_trained_run,
)

DEFAULT_PSEUDO_THRESHOLD = 0.99  # for a first stage trained on hard labels: default_pseudo_threshold
PSEUDO_USE = "--pseudo-labels takes a finished run made by 'run' or 'train' on the same training data"


@dataclass(frozen=True)
class PseudoLabelSource:
    """Where a second stage's pseudo-labels come from: a finished run of ``run`` or ``train`` on the same training
    data, and the mean probability of its most probable digit a test image needs to be used."""

    teacher: Path
    threshold: float = DEFAULT_PSEUDO_THRESHOLD


def default_pseudo_threshold(teacher_cfg: TrainConfig) -> float:
    """``--pseudo-threshold``'s default for a first stage trained with ``teacher_cfg``: 0.99 on hard labels. A network
    trained with label smoothing s puts at most 1 - 0.9 s on a digit (0.91 for the fast recipe's 0.1), so 0.99 would
    take no test image: the bar is lowered by as much (0.90 for the fast recipe)."""
    return round(DEFAULT_PSEUDO_THRESHOLD - 0.9 * teacher_cfg.label_smoothing, 6)


def check_pseudo_threshold(threshold: float) -> None:
    """Refuse (UsageError naming the flag) a threshold that is not a number strictly between 0 and 1."""
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and 0 < threshold < 1):
        raise UsageError(f"--pseudo-threshold: must be a number above 0 and below 1, got {threshold!r}")


def train_run(
    digits: Digits, out: str | Path, method: str = "cnn", cfg: TrainConfig | None = None, progress: bool = True,
    members: int = 1, folds: int = 1, overwrite: bool = False, executor: Executor | None = None,
    tensorboard: bool = False, exclude_rows: Sequence[int] | np.ndarray | None = None,
    pseudo_labels: PseudoLabelSource | None = None, test: Digits | None = None, source: str = "the training data",
) -> dict:
    """Train ``method`` into the run directory ``out`` and report; returns the metrics (also ``metrics.json``).

    ``cfg`` is the method's training config (default: its recipe; a classic method uses only the split
    settings). ``members`` > 1 or ``folds`` > 1 train an ensemble of networks. ``executor`` runs the jobs
    (default: one after another in this process, on ``cfg.device``). ``tensorboard`` also logs each job, and
    the run, to TensorBoard under ``out/tensorboard/`` (it changes no result: a run resumes with or without it).
    ``exclude_rows`` (0-based row indices of ``digits``) are never trained on but still scored; they are part of
    what identifies the run. ``pseudo_labels`` makes the run a second stage: its jobs also train on the ``test``
    images that run's networks label with confidence (:func:`pseudo_labelled`; ``source`` names ``digits`` in the
    message when they are not that run's training data). ``report.html`` is written last.
    """
    return _train(RunDir(out), digits, method, cfg, progress, members, folds, overwrite, executor, tensorboard,
                  exclude_rows, pseudo_labels, test, source)


def run(
    train: Digits, test: Digits, out: str | Path, method: str = "cnn", cfg: TrainConfig | None = None,
    progress: bool = True, members: int = 1, folds: int = 1, tta: bool = False, overwrite: bool = False,
    executor: Executor | None = None, tensorboard: bool = False, exclude_rows: Sequence[int] | np.ndarray | None = None,
    pseudo_labels: PseudoLabelSource | None = None, source: str = "the training data",
) -> dict:
    """:func:`train_run`, then predict ``test`` with the run's model(s) and write ``out/submission.csv``; with
    ``pseudo_labels``, the run also trains on the ``test`` images that run labels with confidence."""
    run_dir = RunDir(out)
    cfg = cfg or method_config(method)
    metrics = _train(run_dir, train, method, cfg, progress, members, folds, overwrite, executor, tensorboard,
                     exclude_rows, pseudo_labels, test, source)
    # The model is read back from its files: the jobs of a resumed run were trained by another process.
    model = load_model(run_dir.path, device=cfg.device, tta=tta)
    run_dir.write_submission(estimator_proba(model, test.images).argmax(1))
    return metrics


def _train(run_dir: RunDir, digits: Digits, method: str, cfg: TrainConfig | None, progress: bool, members: int,
           folds: int, overwrite: bool, executor: Executor | None, tensorboard: bool,
           exclude_rows: Sequence[int] | np.ndarray | None = None, pseudo: PseudoLabelSource | None = None,
           test: Digits | None = None, source: str = "the training data") -> dict:
    cfg = cfg or method_config(method)
    cfg.validate()
    if tensorboard and events.tensorboard_missing():
        raise ImportError(events.tensorboard_missing())
    choose(None, method, members, folds)  # the rule of what can be trained, in one place
    ensemble = members != 1 or folds != 1
    jobs = plan_jobs(method, cfg, digits.labels, members, folds, exclude_rows)
    excluded = excluded_rows(exclude_rows, len(digits)).tolist()
    teacher, recorded = None, {"exclude_rows": excluded} if excluded else {}
    if pseudo is not None:  # everything read and checked before run.json is written
        if test is None:
            raise ValueError("pseudo-labels need the test images")
        jobs, teacher = pseudo_labelled(jobs, folds, digits, test, cfg, pseudo, run_dir.path, source)
        recorded["pseudo_labels"] = _pseudo_manifest(teacher, pseudo, test)
    executor = executor or InProcess(cfg.device)
    # The excluded rows and the pseudo-labels' source decide every job's training rows: a run without them records
    # none (so a run made before they existed resumes), and another list or source is other settings.
    run_dir.start(manifest("ensemble" if ensemble else "single", [job.name for job in jobs if job.name],
                           method=method, train=cfg, members=members, folds=folds, data=digest(digits), **recorded),
                  overwrite)

    def log_events(job: Job, record: JobRecord) -> None:
        events.write_job_events(run_dir, job, record.history, record.summary.accuracy)

    records = run_jobs(jobs, digits, run_dir, executor, test=test if teacher is not None else None, progress=progress,
                       on_record=log_events if tensorboard else None)
    if tensorboard:  # jobs that finished before, in a run started without --tensorboard
        for job in jobs:
            if not events.has_job_events(run_dir, job.name):
                log_events(job, records[job.name])
    if ensemble:
        metrics = _report_ensemble(run_dir, digits, list(records.values()), members, folds)
    else:
        metrics = _report_single(run_dir, digits, records[""], method)
    if excluded:
        metrics["excluded_rows"] = len(excluded)  # never trained on, scored all the same
    if teacher is not None:
        metrics["pseudo_labels"] = _pseudo_metrics(jobs, folds, pseudo, len(test))
    metrics["execution"] = {**executor.execution(), "jobs": [
        {"name": r.summary.name, "where": r.summary.where, "device": r.summary.device, "seconds": r.summary.seconds}
        for r in records.values()]}
    run_dir.write_metrics(metrics)
    if tensorboard:
        events.write_run_events(run_dir, metrics)
    run_dir.write_report(render_report(run_dir))
    return metrics


def pseudo_labelled(jobs: list[Job], folds: int, digits: Digits, test: Digits, cfg: TrainConfig,
                    pseudo: PseudoLabelSource, out: Path, source: str = "the training data",
                    ) -> tuple[list[Job], TrainedRun]:
    """The ``jobs`` of a plan of ``folds`` folds (drawn with ``cfg.seed``), each with the ``test`` images its
    teachers in the finished run ``pseudo.teacher`` are sure of; and that run, read back.

    The teacher must be a finished run of ``run`` or ``train`` on ``digits`` (``source`` names them in the message)
    and, when ``folds`` >= 2, of the same folds: the job of fold k learns only from the networks that never saw
    fold k. Its networks are loaded from their files and predict the test images here (on ``cfg.device``). Every
    fault raises (UsageError, RunDirError, DataError) naming the flag or the file, before anything is written.
    """
    check_pseudo_threshold(pseudo.threshold)
    teacher = read_trained_run(pseudo.teacher, PSEUDO_USE)
    if os.path.realpath(out) == os.path.realpath(teacher.path):
        raise UsageError(f"{out}: is the --pseudo-labels run itself; choose another --out")
    if folds > 1 and (teacher.folds, teacher.cfg.seed) != (folds, cfg.seed):
        drawn = (f"{teacher.folds} folds drawn with seed {teacher.cfg.seed}" if teacher.folds > 1
                 else "one validation split, not folds")
        raise UsageError(f"--pseudo-labels {teacher.path}: trained on {drawn}, but this run has {folds} folds drawn "
                         f"with seed {cfg.seed}; the job of fold k takes pseudo-labels only from the networks that "
                         "never trained on fold k, so the folds must be the same"
                         + (f": give --folds {teacher.folds} --seed {teacher.cfg.seed}" if teacher.folds > 1 else ""))
    teacher_jobs = [job for job, _ in read_trained_records(teacher, digits, source)]
    test_proba = network_probabilities(teacher, teacher_jobs, test.images, device=cfg.device)[0]
    return with_pseudo_labels(jobs, folds, teacher_jobs, test_proba, pseudo.threshold), teacher


def network_probabilities(run: TrainedRun, jobs: list[Job], *images: np.ndarray, device: str = "cpu",
                          ) -> list[dict[str, np.ndarray]]:
    """Each network of the finished ``run`` (its ``jobs``), loaded from its files, all of them checked before any
    predicts; for each set of ``images``, every network's probabilities by job name."""
    run_dir = RunDir(run.path)
    try:  # a predictor refuses a network whose probabilities are not finite numbers (weights that overflow)
        networks = {job.name: TorchPredictor(run_dir.job_dir(job.name), device=device) for job in jobs}
        return [{name: network(x) for name, network in networks.items()} for x in images]
    except ValueError as err:
        raise RunDirError(str(err)) from None


def _pseudo_manifest(teacher: TrainedRun, pseudo: PseudoLabelSource, test: Digits) -> dict:
    """What run.json records of the pseudo-labels' source: another teacher, threshold or test set is other
    settings. The path resolved, so that the same teacher named from another folder still resumes."""
    return {"teacher": str(teacher.path.resolve()), "data": teacher.data, "test_data": digest(test),
            "threshold": pseudo.threshold}


def _pseudo_metrics(jobs: list[Job], folds: int, pseudo: PseudoLabelSource, test_images: int) -> dict:
    """How many test images each fold learned from (every member of a fold alike), and from which teachers."""
    return {"teacher": str(pseudo.teacher), "threshold": pseudo.threshold, "test_images": test_images,
            "folds": [{"fold": k if folds > 1 else None, "used": len(job.pseudo_labels),
                       "teachers": list(job.pseudo_labels.teachers)}
                      for k, job in enumerate(jobs[:folds])]}  # member 0's jobs, fold by fold


def result_line(metrics: dict, out: Path, with_submission: bool) -> tuple[str, float]:
    """The line a command ends with, and the accuracy it reports (a result at chance level is warned of)."""
    if "ensemble_accuracy" in metrics:
        accuracy = metrics["ensemble_accuracy"]
        line = (f"{metrics['estimate']} accuracy: single model {metrics['single_model_accuracy']:.4f}, "
                f"ensemble of {metrics['members']} {accuracy:.4f}, "
                f"with TTA {metrics['ensemble_accuracy_tta']:.4f}; outputs in {out}/")
    else:
        accuracy = metrics["val_accuracy"]
        epochs = (f" after {metrics['epochs']} epoch{'s' * (metrics['epochs'] != 1)}" if "epochs" in metrics
                  else "")
        line = (f"{metrics['model']} val_accuracy {accuracy:.4f}{epochs} "
                f"in {metrics['train_seconds']:.0f}s on {metrics['device']}; outputs in {out}/")
    return line + (f" (submission: {Path(out) / SUBMISSION_FILE})" if with_submission else ""), accuracy


def _report_single(run_dir: RunDir, digits: Digits, record: JobRecord, method: str) -> dict:
    labels, proba = digits.labels[record.scored_rows], record.proba
    run_dir.write_figure(plot_confusion(labels, proba.argmax(1), f"{method}: validation set ({len(labels):,} images), "
                                        f"accuracy {accuracy(proba, labels):.4f}"), CONFUSION_FILE)
    run_dir.write_figure(plot_errors(digits.images[record.scored_rows], labels, proba,
                                     confident_errors(proba, labels)), ERRORS_FILE)
    metrics = {
        "model": method,
        "val_accuracy": accuracy(proba, labels),
        "val_loss": log_loss(proba, labels),
        "train_seconds": record.summary.seconds,
        "device": record.summary.device,
        "n_train": record.summary.train_rows,
        "n_val": len(labels),
        "per_class": per_class(labels, proba.argmax(1)),
    }
    if record.history:
        history = record.history
        run_dir.write_figure(plot_curves(history), CURVES_FILE)
        epoch_seconds = sum(row["seconds"] for row in history)
        metrics.update({
            "epochs": len(history),
            "seconds_per_epoch": round(epoch_seconds / len(history), 2),
            "train_images_per_second": round(float(np.mean([row["images_per_second"] for row in history])), 1),
        })
    return metrics


def _report_ensemble(run_dir: RunDir, digits: Digits, records: list[JobRecord], members: int, folds: int) -> dict:
    """Each member's held-out accuracy (over its folds), the average's, with and without test-time augmentation;
    the confusion matrix and the digits the average still gets wrong."""
    n = len(digits)
    proba = np.zeros((members, n, 10), dtype=np.float32)
    proba_tta = np.zeros_like(proba)
    held_out = np.zeros(n, dtype=bool)
    seconds = np.zeros(members)
    for i, record in enumerate(records):  # planned member by member, fold by fold
        m = i // folds
        proba[m, record.scored_rows] = record.proba
        proba_tta[m, record.scored_rows] = record.proba_tta
        held_out[record.scored_rows] = True
        seconds[m] += record.summary.seconds
    y = digits.labels[held_out]

    def row(model: str, p: np.ndarray, p_tta: np.ndarray, train_seconds: float) -> dict:
        return {"model": model, "accuracy": accuracy(p, y), "errors": int((p.argmax(1) != y).sum()),
                "accuracy_tta": accuracy(p_tta, y), "errors_tta": int((p_tta.argmax(1) != y).sum()),
                "train_seconds": round(train_seconds, 1)}

    table = [row(f"member {m}", proba[m, held_out], proba_tta[m, held_out], seconds[m]) for m in range(members)]
    mean, mean_tta = proba.mean(0)[held_out], proba_tta.mean(0)[held_out]
    table.append(row(f"ensemble of {members}", mean, mean_tta, seconds.sum()))
    estimate = "out-of-fold" if folds > 1 else "validation split"
    title = f"ensemble of {members} + TTA"
    run_dir.write_figure(plot_confusion(y, mean_tta.argmax(1), f"{title}, {estimate} ({len(y):,} images): "
                                        f"accuracy {accuracy(mean_tta, y):.4f}"), CONFUSION_FILE)
    run_dir.write_figure(plot_errors(digits.images[held_out], y, mean_tta, confident_errors(mean_tta, y, k=18),
                                     title=f"Digits the {title} still gets wrong"), ERRORS_FILE)
    histories = {record.name: (i // folds, record.history) for i, record in enumerate(records) if record.history}
    if histories:
        run_dir.write_figure(plot_member_curves(histories), CURVES_FILE)
    return {
        "estimate": estimate, "rows_scored": int(held_out.sum()), "members": members, "folds": folds,
        "single_model_accuracy": float(np.mean([row["accuracy"] for row in table[:-1]])),
        "ensemble_accuracy": table[-1]["accuracy"], "ensemble_accuracy_tta": table[-1]["accuracy_tta"],
        "ensemble_loss": log_loss(mean, y), "train_seconds": round(seconds.sum(), 1), "table": table,
        "per_class": per_class(y, mean_tta.argmax(1)),
        # How often members err on the same rows (one pass): what averaging them has to work with.
        **({"shared_errors": shared_errors(list(proba[:, held_out]), y).summary()} if members > 1 else {}),
    }


def per_class(labels: np.ndarray, predicted: np.ndarray) -> list[dict]:
    """Per digit: how many images, how many predicted right, and the accuracy (None for a digit never seen)."""
    rows = []
    for digit in range(10):
        mine = labels == digit
        correct = int((predicted[mine] == digit).sum())
        rows.append({"digit": digit, "images": int(mine.sum()), "correct": correct,
                     "accuracy": correct / int(mine.sum()) if mine.any() else None})
    return rows


def compare(
    train: Digits, out: str, models: list[str] | None = None, test: Digits | None = None, folds: int = 1,
    val_fraction: float = 0.1, seed: int = 2, progress: bool = True, overwrite: bool = False,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Fit each method on the same split(s) of ``train``, score it on the held-out part, write ``comparison.csv``,
    ``comparison.png`` and, with a test set, ``submissions/<model>.csv`` (the folds' mean probabilities)."""
    models = models or list(METHODS)
    check_comparison(models, folds, val_fraction, seed)
    jobs = compare_jobs(models, train.labels, folds, val_fraction, seed, predict_test=test is not None)
    run_dir = RunDir(out)
    run_dir.start(manifest("compare", [job.name for job in jobs], models=models, folds=folds,
                           val_fraction=val_fraction, seed=seed, data=digest(train),
                           test_data=digest(test) if test is not None else None), overwrite)
    records = run_jobs(jobs, train, run_dir, executor or InProcess("auto"), test=test, progress=progress)
    rows = []
    for method in models:
        mine = [records[job.name] for job in jobs if job.method == method]
        scores = [record.summary.accuracy for record in mine]
        rows.append({
            "model": method,
            "accuracy": float(np.mean(scores)),
            "accuracy_std": float(np.std(scores)),
            "fit_seconds": round(float(np.mean([r.summary.seconds for r in mine])), 2),
            "predict_seconds": round(float(np.mean([r.summary.predict_seconds for r in mine])), 3),
            "n_train": mine[0].summary.train_rows,
            "n_val": mine[0].summary.scored_rows,
            "folds": len(mine),
            "settings": method_settings(method, next(job.config for job in jobs if job.method == method)),
        })
        if test is not None:
            run_dir.write_submission(np.mean([r.test_proba for r in mine], axis=0).argmax(1), method)
    table = pd.DataFrame(rows)
    run_dir.write_table(table, COMPARISON_TABLE)
    run_dir.write_figure(plot_comparison(table), COMPARISON_FIGURE)
    return table


def check_comparison(models: list[str], folds: int, val_fraction: float, seed: int) -> None:
    """Refuse (ValueError) a comparison that cannot run: unknown or repeated methods, no split, a bad seed."""
    unknown = [m for m in models if m not in METHOD_NAMES]
    if unknown or not models:
        raise ValueError(f"unknown model '{unknown[0] if unknown else ''}'; known: {', '.join(METHOD_NAMES)}")
    if len(set(models)) != len(models):
        raise ValueError(f"--models names a method twice: {','.join(models)}")
    if folds < 1 or (folds == 1 and not 0 < val_fraction < 1):
        raise ValueError("--folds must be >= 1 and --val-fraction between 0 and 1")
    if not 0 <= seed < 2**31:
        raise ValueError("--seed must be in 0 .. 2^31 - 1")


def method_settings(method: str, cfg: TrainConfig) -> str:
    """The settings that define a method, short enough for a table cell."""
    if check_method(method).network:
        return (f"{method} network, {cfg.epochs} epochs, {cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch_size}, "
                f"augment {'on' if cfg.augment else 'off'}")
    from sklearn.preprocessing import FunctionTransformer

    estimator = make_estimator(method)
    steps = [step for _, step in getattr(estimator, "steps", [(None, estimator)])]
    return " -> ".join(repr(step) for step in steps if not isinstance(step, FunctionTransformer))
