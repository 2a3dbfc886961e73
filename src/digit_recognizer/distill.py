"""Distillation: one fast network (the student) trained on a finished run's averaged probabilities (its teachers'
soft targets) instead of the labels, written as a single run that ``predict``, ``export`` and ``serve`` take.

The teacher run (``run`` or ``train``: a single run, ``--members N``, ``--folds K``) is read back like any input,
as the label audit reads one: ``run.json`` checked, its jobs planned again exactly as it planned them, every job's
record checked against its job (:func:`~digit_recognizer.rundir.read_trained_records`), the training data its own
(its digest), and every teacher network loaded from its files (:func:`~digit_recognizer.loading.load_model`)
before anything is trained or written.

:func:`plan_students` makes the students, each a :class:`Student` (a job, and the teacher jobs it learns from):

- One scoring student per (train, scored) pair of the teacher's plan: its K folds (or its one validation split).
  Student ``member0-fold<k>`` trains on the rows the teachers of fold k trained on, plus the test images, with
  soft targets from those teachers only (every member trained on fold k's complement, none on fold k), and is
  scored on fold k with the true labels. Neither it nor any of its teachers has seen those rows: over all folds,
  the students' out-of-fold accuracy is an honest score of a student trained this way.
- The served student, the run's own model (at the top of the run directory, like a single run's): trains on
  every training row (those the teacher excluded aside) plus the test images, its targets the mean over every
  teacher network. Each network predicts the rows as the fold students' teachers do (the rows they trained on
  included), not the teacher's stored out-of-fold probabilities: the served student learns from the same kind
  of targets as the students whose score stands for it.

Targets are the teachers' mean probabilities softened by the temperature T (p^(1/T), renormalised); the student's
logits are divided by T in the loss, and the loss multiplied by T^2 (Hinton et al. 2015;
:class:`~digit_recognizer.train.SoftTargets`). Every student is a job of the run directory (checkpoints each
epoch, ``job.json`` when finished): the same command run again resumes, other settings are refused.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import train as training_loop  # by module: resolve_device and fit are looked up when called
from .config import DEFAULT_TEMPERATURE, METHODS, TrainConfig, check_method, method_config
from .data import Digits, split_indices
from .errors import UsageError
from .evaluate import accuracy, confident_errors, log_loss, network_proba, network_proba_and_tta
from .execute import run_jobs
from .jobs import Job, JobRecord, JobResult, member_name
from .loading import load_model
from .methods import NetClassifier, estimator_proba
from .plots import plot_confusion, plot_curves, plot_errors
from .report import render_report
from .rundir import (
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
from .runs import network_probabilities, per_class

TEACHER_USE = "distil a run made by 'run' or 'train' (a single run, --members N and/or --folds K)"


@dataclass(frozen=True)
class Student:
    """A student: its job (rows it trains on, rows it is scored on, settings, folder) and its teachers."""

    job: Job
    teachers: tuple[str, ...]  # the teacher run's jobs whose mean probabilities it learns from
    scored: bool               # True: a scoring student, whose scored rows none of it or its teachers trained on


@dataclass(frozen=True)
class TeacherProba:
    """Each teacher network's probabilities, by its job's name: for every training row, and every test image."""

    train: dict[str, np.ndarray]  # (n_train, 10)
    test: dict[str, np.ndarray]   # (n_test, 10)


def plan_students(teacher: TrainedRun, teacher_jobs: list[Job], labels: np.ndarray, method: str, cfg: TrainConfig,
                  score: bool = True) -> list[Student]:
    """The students of a distillation: with ``score``, one per (train, scored) pair of the teacher's plan
    (``teacher_jobs``, planned member by member, fold by fold), then the served student (job name ``""``)."""
    students = []
    if score:
        for k in range(teacher.folds):
            pair = teacher_jobs[k]  # member 0 of fold k: every member of the fold has the same rows
            job = Job(member_name(0, k if teacher.folds > 1 else None), method, cfg, pair.train_rows,
                      pair.scored_rows, heldout_tta=True)  # scored as the fast preset predicts too
            teachers = tuple(teacher_jobs[m * teacher.folds + k].name for m in range(teacher.members))
            students.append(Student(job, teachers, scored=True))
    every = np.setdiff1d(np.arange(len(labels)), np.asarray(teacher.exclude_rows, dtype=np.int64))
    # The served student is trained on every row; its history and job.json measure its fit to the labels of a
    # validation split of them (rows it trained on: the scoring students' score is the honest one).
    monitored = split_indices(labels, 1, cfg.val_fraction, cfg.seed)[0][1]
    served = Job("", method, cfg, every, np.sort(monitored), schedule_on_scored=True)
    return [*students, Student(served, tuple(job.name for job in teacher_jobs), scored=False)]


def teacher_probabilities(teacher: TrainedRun, teacher_jobs: list[Job], train: Digits, test: Digits,
                          device: str = "cpu") -> TeacherProba:
    """Every teacher network, loaded from its files (all of them checked before any predicts), predicting every
    training row and every test image."""
    return TeacherProba(*network_probabilities(teacher, teacher_jobs, train.images, test.images, device=device))


def student_targets(student: Student, proba: TeacherProba, temperature: float) -> np.ndarray:
    """A student's soft targets, one row per image it trains on (its training rows, then the test images): the mean
    over its teachers only, softened by ``temperature``."""
    mean_train = np.mean([proba.train[name] for name in student.teachers], axis=0)
    mean_test = np.mean([proba.test[name] for name in student.teachers], axis=0)
    return training_loop.soften(np.concatenate([mean_train[student.job.train_rows], mean_test]), temperature)


class StudentTrainer:
    """Trains students one after another in this process (an executor of :func:`~digit_recognizer.execute.run_jobs`),
    each on its soft targets, each resuming from its last finished epoch."""

    def __init__(self, targets: dict[str, np.ndarray], temperature: float, device: str = "auto") -> None:
        self.targets = targets
        self.temperature = temperature
        self.device = str(training_loop.resolve_device(device))

    def __call__(self, jobs: list[Job], digits: Digits, test: Digits | None, run_dir: RunDir,
                 progress: bool) -> Iterator[JobResult]:
        for job in jobs:
            yield train_student(job, digits, test, self.targets[job.name], self.temperature, self.device, progress,
                                run_dir.checkpoint(job.name))

    def execution(self) -> dict:
        return {"engine": "in-process", "device": self.device}


def train_student(job: Job, digits: Digits, test: Digits, targets: np.ndarray, temperature: float,
                  device: str = "cpu", progress: bool = False, checkpoint: object | None = None) -> JobResult:
    """Train one student on its training rows and the test images, with ``targets`` (one row per image, in that
    order) as soft targets, and score it on its scored rows with their labels. Writes nothing."""
    cfg = job.config
    learn = Digits(np.concatenate([digits.images[job.train_rows], test.images]))  # no labels: targets only
    monitor = job.scored_rows
    if cfg.schedule == "plateau" and not job.schedule_on_scored:  # the schedule must not decide from scored rows
        own = split_indices(digits.labels[job.train_rows], 1, cfg.val_fraction, cfg.seed)[0][1]
        monitor = job.train_rows[own]
    label = f"{job.name}: " if job.name else ""
    started = time.perf_counter()
    network, history = training_loop.fit(
        job.method, cfg, learn, Digits(digits.images[monitor], digits.labels[monitor]),
        training_loop.resolve_device(device), progress, label, checkpoint,
        training_loop.SoftTargets(targets, temperature))
    seconds = max(time.perf_counter() - started, history[-1]["elapsed"])  # also the epochs of an earlier process
    started = time.perf_counter()
    scored = digits.images[job.scored_rows]
    proba, proba_tta = network_proba_and_tta(network, scored, device, cfg.precision) if job.heldout_tta else (
        network_proba(network, scored, device=device, precision=cfg.precision), None)
    predict_seconds = time.perf_counter() - started
    student = NetClassifier(job.method, cfg, device=device)
    student.network_, student.history_, student.classes_ = network.cpu(), history, np.arange(10)
    return JobResult(job, student, history, accuracy(proba, digits.labels[job.scored_rows]), proba, proba_tta, None,
                     seconds, predict_seconds, socket.gethostname(), str(device))


def distill(teacher_path: str | Path, train: Digits, test: Digits, out: str | Path, method: str = "fast",
            cfg: TrainConfig | None = None, temperature: float = DEFAULT_TEMPERATURE, score: bool = True,
            progress: bool = True, overwrite: bool = False, source: str = "the training data") -> dict:
    """Distil the finished run in ``teacher_path`` (trained on ``train``) into one ``method`` network in the run
    directory ``out``, trained on ``train`` and the ``test`` images; returns the metrics (also ``metrics.json``).

    With ``score``, the scoring students are trained first and their accuracy on rows none of them, nor their
    teachers, trained on is the run's ``val_accuracy``. Everything is read and checked before anything is written:
    a fault raises RunDirError, DataError (``source`` names the training data) or UsageError naming the file.
    """
    try:
        training_loop.check_temperature(temperature)
    except ValueError as err:
        raise UsageError(f"--temperature: {err}") from None
    if not check_method(method).network:
        networks = ", ".join(name for name, record in METHODS.items() if record.network)
        raise UsageError(f"--model {method}: a student is a network; choose one of {networks}")
    cfg = cfg or method_config(method)
    cfg.validate()
    teacher = read_trained_run(teacher_path, TEACHER_USE)
    run_dir = RunDir(out)
    run_dir.check_writable()
    if os.path.realpath(run_dir.path) == os.path.realpath(teacher.path):
        raise UsageError(f"{out}: is the teacher run itself; choose another --out")
    records = read_trained_records(teacher, train, source)
    teacher_jobs = [job for job, _ in records]
    students = plan_students(teacher, teacher_jobs, train.labels, method, cfg, score)
    # Only the students not finished yet train (a resumed run's), so only their teachers predict: none when the
    # command is run again on a finished distillation. (With --overwrite every student trains again.)
    pending = [s for s in students if overwrite or not run_dir.finished(s.job.name)]
    needed = {name for s in pending for name in s.teachers}
    proba = teacher_probabilities(teacher, [job for job in teacher_jobs if job.name in needed], train, test,
                                  cfg.device)
    targets = {s.job.name: student_targets(s, proba, temperature) for s in pending}

    run_dir.start(manifest("distill", [s.job.name for s in students if s.job.name], method=method, train=cfg,
                           temperature=temperature, score=score, data=digest(train), test_data=digest(test),
                           teacher={"path": str(teacher.path.resolve()), "method": teacher.method,
                                    "members": teacher.members, "folds": teacher.folds, "data": teacher.data}),
                  overwrite)
    trainer = StudentTrainer(targets, temperature, cfg.device)
    done = run_jobs([s.job for s in students], train, run_dir, trainer, test, progress)
    served = done[""]
    # The model is read back from its files, as a run's is: a resumed run's student was trained by another process.
    run_dir.write_submission(estimator_proba(load_model(run_dir.path, device=cfg.device), test.images).argmax(1))
    run_dir.write_figure(plot_curves(served.history), CURVES_FILE)
    history = served.history
    metrics = {
        "model": method,
        "teacher": str(teacher.path),
        "teacher_members": teacher.members,
        "teacher_folds": teacher.folds,
        "temperature": temperature,
        "train_images": len(students[-1].job.train_rows),  # labelled rows; the test images besides
        "test_images": len(test),
        "epochs": len(history),
        "train_seconds": served.summary.seconds,
        "seconds_per_epoch": round(sum(row["seconds"] for row in history) / len(history), 2),
        "train_images_per_second": round(float(np.mean([row["images_per_second"] for row in history])), 1),
        "device": served.summary.device,
    }
    if score:
        metrics.update(_score(run_dir, train, [s for s in students if s.scored], done, records, teacher))
    metrics["execution"] = {**trainer.execution(), "jobs": [
        {"name": r.summary.name, "where": r.summary.where, "device": r.summary.device, "seconds": r.summary.seconds}
        for r in done.values()]}
    run_dir.write_metrics(metrics)
    run_dir.write_report(render_report(run_dir))
    return metrics


def _score(run_dir: RunDir, digits: Digits, students: list[Student], done: dict[str, JobRecord],
           records: list[tuple[Job, JobRecord]], teacher: TrainedRun) -> dict:
    """The scoring students' accuracy over their scored rows (out of fold with K folds), beside the teachers' own
    (the mean of each fold's members, as the students are scored: no test-time augmentation); the confusion matrix
    and the digits the students get wrong."""
    n = len(digits)
    proba, proba_tta = np.zeros((n, 10), dtype=np.float32), np.zeros((n, 10), dtype=np.float32)
    teacher_proba = np.zeros((n, 10), dtype=np.float32)
    scored = np.zeros(n, dtype=bool)
    for student in students:
        record = done[student.job.name]
        proba[record.scored_rows], proba_tta[record.scored_rows] = record.proba, record.proba_tta
        scored[record.scored_rows] = True
    for _, record in records:
        teacher_proba[record.scored_rows] += record.proba / teacher.members
    y, proba, proba_tta, teacher_proba = digits.labels[scored], proba[scored], proba_tta[scored], teacher_proba[scored]
    estimate = "out-of-fold" if teacher.folds > 1 else "validation split"
    run_dir.write_figure(plot_confusion(y, proba.argmax(1), f"distilled students, {estimate} ({len(y):,} images): "
                                        f"accuracy {accuracy(proba, y):.4f}"), CONFUSION_FILE)
    run_dir.write_figure(plot_errors(digits.images[scored], y, proba, confident_errors(proba, y, k=18),
                                     title="Digits the distilled students get wrong"), ERRORS_FILE)
    return {
        "estimate": estimate, "rows_scored": int(scored.sum()), "n_val": int(scored.sum()),
        "val_accuracy": accuracy(proba, y), "val_loss": log_loss(proba, y),
        "errors": int((proba.argmax(1) != y).sum()),
        # with the fast preset's test-time augmentation (the unsure digits only), as a served student predicts
        "val_accuracy_tta": accuracy(proba_tta, y), "errors_tta": int((proba_tta.argmax(1) != y).sum()),
        "teacher_accuracy": accuracy(teacher_proba, y), "teacher_errors": int((teacher_proba.argmax(1) != y).sum()),
        "students": [{"name": s.job.name, "teachers": list(s.teachers), "train_rows": len(s.job.train_rows),
                      "scored_rows": len(s.job.scored_rows), "accuracy": done[s.job.name].summary.accuracy}
                     for s in students],
        "per_class": per_class(y, proba.argmax(1)),
    }


def result_line(metrics: dict, out: Path) -> str:
    """The line ``distill`` ends with."""
    score = (f"{metrics['estimate']} accuracy {metrics['val_accuracy']:.4f} ({metrics['errors']:,} errors; "
             f"{metrics['errors_tta']:,} with TTA; the teachers {metrics['teacher_accuracy']:.4f}, "
             f"{metrics['teacher_errors']:,})" if "estimate" in metrics
             else "not scored (--no-score)")
    return (f"distilled {metrics['teacher']} into one {metrics['model']} network at temperature "
            f"{metrics['temperature']:g} with {metrics['test_images']:,} test images: {score}; outputs in {out}/ "
            f"(submission: {Path(out) / SUBMISSION_FILE})")

