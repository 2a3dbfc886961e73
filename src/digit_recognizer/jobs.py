"""The unit of work: a training job, its records, the one function that trains it, and the plans made of jobs.

A single run, each member x fold of an ensemble, and each method x fold of a comparison is a :class:`Job`: a
method and its settings, the rows it trains on and the rows it is scored on, its name in the run directory and,
in the second stage of a run with pseudo-labels, the test images it also learns from with the digits a finished
run gave them (:class:`PseudoLabels`, chosen by :func:`with_pseudo_labels`). :func:`train_job` trains one and
returns a :class:`JobResult` (the fitted model, history, held-out probabilities, timings) without writing
anything. A finished job is kept as a :class:`JobRecord`: its :class:`JobSummary` (``job.json``), held-out
probabilities and history. Running a plan's jobs, here or on a cluster, is :mod:`digit_recognizer.execute`'s;
keeping their records, :mod:`digit_recognizer.rundir`'s.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import TrainConfig, check_method
from .data import N_CLASSES, DataError, Digits, split, split_indices
from .errors import RunDirError

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator


@dataclass(frozen=True)
class PseudoLabels:
    """Test images a job also trains on, each with the digit its teachers (networks of a finished run) gave it.

    Indices and labels only, not images: a job stays cheap to send to a cluster, which has the test set already.
    """

    rows: np.ndarray               # indices into the test set
    labels: np.ndarray             # the teachers' digit for each
    teachers: tuple[str, ...]      # the teacher run's jobs whose mean probabilities chose them

    def __len__(self) -> int:
        return len(self.rows)

    def added_to(self, digits: Digits, test: Digits | None) -> Digits:
        """``digits`` followed by these test images with their pseudo-labels."""
        if test is None:
            raise ValueError("a job with pseudo-labels needs the test images")
        return Digits(np.concatenate([digits.images, test.images[self.rows]]),
                      np.concatenate([digits.labels, self.labels]))


@dataclass
class Job:
    """What to train, on which rows, and where its results go."""

    name: str                  # its folder under the run directory's jobs/ ("" = the run directory itself)
    method: str
    config: TrainConfig        # the job's own settings, its seed included
    train_rows: np.ndarray     # indices of the training digits it learns from
    scored_rows: np.ndarray    # indices it is scored on, never trained on
    # The seed kernel lets its validation split steer the learning-rate schedule (a single run does the same);
    # every other job keeps its scored rows out of all decisions.
    schedule_on_scored: bool = False
    keep_model: bool = True    # write the fitted model (a comparison keeps only the probabilities)
    predict_test: bool = False  # also return probabilities for the test digits
    heldout_tta: bool = False  # also score the held-out rows with test-time augmentation (ensembles report it)
    pseudo_labels: PseudoLabels | None = None  # test images it also trains on (a run with --pseudo-labels)


@dataclass
class JobResult:
    """What :func:`train_job` returns: the fitted model (if kept), history, held-out probabilities, timings."""

    job: Job
    estimator: BaseEstimator | None  # None when the job does not keep its model
    history: list[dict] | None       # networks: one row per epoch
    accuracy: float                  # on the scored rows
    proba: np.ndarray                # (len(scored_rows), 10)
    proba_tta: np.ndarray | None     # networks: the same with test-time augmentation
    test_proba: np.ndarray | None
    seconds: float                   # training
    predict_seconds: float           # predicting the scored rows
    where: str                       # host (and, on a cluster, node) it ran on
    device: str
    resources: dict | None = None    # on a cluster, the CPUs and GPUs the task was given


@dataclass(frozen=True)
class JobSummary:
    """A finished job's ``job.json``: what it was and how it went."""

    name: str
    method: str
    accuracy: float          # on its scored rows
    seconds: float           # training, every epoch counted (also those of an interrupted process)
    predict_seconds: float   # predicting its scored rows
    where: str               # host (and, on a cluster, node) it ran on
    device: str
    train_rows: int
    scored_rows: int
    epochs: int              # networks: epochs trained; 0 for a scikit-learn method
    resources: dict | None = None  # on a cluster, the CPUs and GPUs the task was given
    pseudo_labels: int | None = None  # test images it also trained on (a run with --pseudo-labels); else absent

    @classmethod
    def from_dict(cls, values: dict, where: str) -> JobSummary:
        """Check ``values`` (names, types, ranges) as read from a file; raises RunDirError naming ``where``."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        missing = sorted(set(fields) - set(values) - _OPTIONAL)
        if unknown or missing:
            raise RunDirError(f"{where}: {'unknown key ' + repr(unknown[0]) if unknown else 'no ' + repr(missing[0])}")
        for name, kind in fields.items():
            value = values.get(name)
            whole = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            ok = {"str": isinstance(value, str), "int": whole, "int | None": value is None or whole,
                  "float": isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                  and value >= 0}.get(kind)
            if kind.startswith("dict"):
                ok = value is None or (isinstance(value, dict) and all(
                    isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                    for k, v in value.items()))
            if not ok:
                raise RunDirError(f"{where}: '{name}' must be {_KIND_WORDS[kind]}, got {str(value)[:60]!r}")
        if values["accuracy"] > 1:
            raise RunDirError(f"{where}: 'accuracy' must be in 0 .. 1, got {values['accuracy']!r}")
        return cls(**values)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if self.pseudo_labels is None:  # only a job that learned from test images says so: others read as before
            del values["pseudo_labels"]
        return values


_OPTIONAL = {"resources", "pseudo_labels"}  # keys a job.json may lack (one of a run without pseudo-labels)
_KIND_WORDS = {"str": "a string", "int": "a whole number >= 0", "int | None": "null or a whole number >= 0",
               "float": "a finite number >= 0", "dict | None": "null or a table of numbers"}


@dataclass
class JobRecord:
    """A finished job: its summary, its held-out probabilities and (networks) its history."""

    name: str
    summary: JobSummary
    scored_rows: np.ndarray
    proba: np.ndarray
    proba_tta: np.ndarray | None
    test_proba: np.ndarray | None
    history: list[dict] | None


def train_job(job: Job, digits: Digits, test: Digits | None = None, device: str = "cpu", progress: bool = False,
              checkpoint: object | None = None) -> JobResult:
    """Train one job and score it on its held-out rows. Writes nothing; the caller decides where results go."""
    # Imported here, not at module level: the records above are read by commands that never train (start-up time).
    from .evaluate import accuracy, network_proba_and_tta
    from .methods import NetClassifier, estimator_proba, make_estimator

    train = Digits(digits.images[job.train_rows], digits.labels[job.train_rows])
    scored = Digits(digits.images[job.scored_rows], digits.labels[job.scored_rows])
    label = f"{job.name}: " if job.name else ""
    estimator = make_estimator(job.method, job.config, device=device, progress=progress, label=label)
    started = time.perf_counter()
    if isinstance(estimator, NetClassifier):
        if job.schedule_on_scored or job.config.schedule != "plateau":
            fit_rows, monitor = train, scored  # one-cycle takes no decision from the monitored rows
        else:  # the plateau schedule reacts to validation accuracy: give it a split of the job's own rows
            fit_rows, monitor = split(train, job.config.val_fraction, job.config.seed)
        # Pseudo-labelled test images are learned from, never monitored: the split above is the run's without them.
        fit_rows = _learned(fit_rows, job, test)
        estimator.fit(fit_rows.images, fit_rows.labels, monitor.images, monitor.labels, checkpoint=checkpoint)
    else:
        fit_rows = _learned(train, job, test)
        estimator.fit(fit_rows.images, fit_rows.labels)
    seconds = time.perf_counter() - started

    started = time.perf_counter()
    proba_tta = history = None
    if job.heldout_tta and isinstance(estimator, NetClassifier):
        proba, proba_tta = network_proba_and_tta(estimator.network_, scored.images, device, job.config.precision)
    else:
        proba = estimator_proba(estimator, scored.images)
    predict_seconds = time.perf_counter() - started
    test_proba = estimator_proba(estimator, test.images) if job.predict_test and test is not None else None
    if isinstance(estimator, NetClassifier):
        history = estimator.history_
        # Every epoch counts, also those an interrupted process trained before this one resumed the job.
        seconds = max(seconds, history[-1]["elapsed"])
        estimator.network_.cpu()  # results travel (and are saved) from the CPU
    return JobResult(job, estimator if job.keep_model else None, history, accuracy(proba, scored.labels), proba,
                     proba_tta, test_proba, seconds, predict_seconds, socket.gethostname(), str(device))


def _learned(rows: Digits, job: Job, test: Digits | None) -> Digits:
    """What a job fits on: its training rows, and the test images of its pseudo-labels (hard targets) if any."""
    return rows if job.pseudo_labels is None else job.pseudo_labels.added_to(rows, test)


# --- plans ---------------------------------------------------------------------------------------------------

def check_split(labels: np.ndarray, folds: int, val_fraction: float) -> None:
    """Refuse, before any training, data too small for the split asked for (raises DataError)."""
    if folds < 1:
        raise ValueError("folds must be at least 1")
    counts = np.bincount(labels, minlength=N_CLASSES)
    present = counts[counts > 0]
    if folds > 1:
        if folds > present.min():
            digit = int(np.flatnonzero(counts == present.min())[0])
            raise DataError(f"training data: {folds} folds need at least {folds} rows of every digit, but digit "
                            f"{digit} has {present.min()}; use --folds {max(2, present.min())} or fewer")
        return
    n_val = math.ceil(len(labels) * val_fraction)
    n_train = len(labels) - n_val
    needed = len(present) if present.min() >= 2 else 1  # a stratified split needs every digit on both sides
    if n_val < needed or n_train < max(needed, 2):
        raise DataError(f"training data: {len(labels):,} rows with val_fraction {val_fraction:g} leave {n_train:,} "
                        f"to train on and {n_val:,} to validate on; each side needs at least "
                        f"{max(needed, 2)} (one per digit)")


def excluded_rows(rows: Sequence[int] | np.ndarray | None, n_rows: int) -> np.ndarray:
    """``rows`` (row indices to leave out of training, or None) as a sorted array of distinct indices; refuses
    (DataError) anything else: the one check of an exclusion list, whoever made it."""
    if rows is None:
        return np.zeros(0, dtype=np.int64)
    array = np.asarray(rows)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise DataError("excluded rows: expected a list of row numbers")
    if array.size and (array.min() < 0 or array.max() >= n_rows):
        bad = array[(array < 0) | (array >= n_rows)][0]
        raise DataError(f"excluded rows: row {bad} is out of range; the training data has {n_rows:,} rows")
    unique = np.unique(array).astype(np.int64)
    if len(unique) != len(array):
        raise DataError("excluded rows: a row is listed twice")
    return unique


def _pairs(labels: np.ndarray, folds: int, val_fraction: float, seed: int,
           exclude_rows: Sequence[int] | np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """A plan's (train, scored) pairs, the excluded rows out of every training part (never out of a scored part);
    refuses an exclusion that leaves a training part without a digit the data has."""
    check_split(labels, folds, val_fraction)
    exclude = excluded_rows(exclude_rows, len(labels))
    pairs = split_indices(labels, folds, val_fraction, seed, exclude)
    if len(exclude):
        for k, (train_rows, _) in enumerate(pairs):
            missing = np.setdiff1d(np.unique(labels), labels[train_rows])
            if len(missing):
                raise DataError(f"excluded rows: {len(exclude):,} rows excluded leave no row of digit {missing[0]} to "
                                "train on" + (f" in fold {k}" if folds > 1 else ""))
    return pairs


def single_job(method: str, cfg: TrainConfig, labels: np.ndarray,
               exclude_rows: Sequence[int] | np.ndarray | None = None) -> Job:
    """The seed kernel's setting: one stratified validation split, which also steers the schedule. The
    ``exclude_rows`` are never trained on; those in the validation split are scored."""
    train_rows, val_rows = _pairs(labels, 1, cfg.val_fraction, cfg.seed, exclude_rows)[0]
    return Job("", method, cfg, train_rows, val_rows, schedule_on_scored=True)


def member_name(member: int, fold: int | None) -> str:
    return f"member{member}" + (f"-fold{fold}" if fold is not None else "")


def ensemble_jobs(method: str, cfg: TrainConfig, labels: np.ndarray, members: int, folds: int,
                  exclude_rows: Sequence[int] | np.ndarray | None = None) -> list[Job]:
    """``members`` networks that differ by seed, each trained on every one of ``folds`` folds (one split if 1).
    The ``exclude_rows`` are in no job's training rows, and scored like any other row."""
    if members < 1:
        raise ValueError("members must be at least 1")
    pairs = _pairs(labels, folds, cfg.val_fraction, cfg.seed, exclude_rows)
    return [Job(member_name(m, k if folds > 1 else None), method,
                dataclasses.replace(cfg, seed=cfg.seed + 1000 * (m + 1)), train_rows, scored_rows, heldout_tta=True)
            for m in range(members) for k, (train_rows, scored_rows) in enumerate(pairs)]


def plan_jobs(method: str, cfg: TrainConfig, labels: np.ndarray, members: int = 1, folds: int = 1,
              exclude_rows: Sequence[int] | np.ndarray | None = None) -> list[Job]:
    """The jobs of a run made by ``run`` or ``train``: one (a single run), or an ensemble's members x folds. The
    run that trains them and every reader of its records (the label audit) plan them here, alike."""
    if members != 1 or folds != 1:
        return ensemble_jobs(method, cfg, labels, members, folds, exclude_rows)
    return [single_job(method, cfg, labels, exclude_rows)]


def with_pseudo_labels(jobs: list[Job], folds: int, teachers: list[Job], test_proba: dict[str, np.ndarray],
                       threshold: float) -> list[Job]:
    """The ``jobs`` of a plan of ``folds`` folds, each also trained on the test images its teachers are sure of:
    those whose mean probability over its teacher networks of their most probable digit is at least ``threshold``,
    labelled with that digit.

    ``teachers`` are the jobs of a finished run, ``test_proba`` each one's probabilities of the test images by job
    name. With K >= 2 folds, a job's teachers are the networks scored on exactly its scored rows (every member of
    that fold of the finished run): they never trained on those rows, so the test images carry no knowledge of the
    labels the job is scored on into it. With one fold, every teacher network takes part.
    """
    labelled = []
    for job in jobs:
        names = tuple(t.name for t in teachers if folds == 1 or np.array_equal(t.scored_rows, job.scored_rows))
        if not names:  # the caller checks the folds first; this guards honesty against any other plan
            raise ValueError(f"job {job.name}: no teacher network was scored on its rows; pseudo-labels need the "
                             "teacher run's folds")
        mean = np.mean([test_proba[name] for name in names], axis=0)
        rows = np.flatnonzero(mean.max(1) >= threshold)
        labelled.append(dataclasses.replace(job, pseudo_labels=PseudoLabels(rows, mean[rows].argmax(1), names)))
    return labelled


def compare_jobs(methods: list[str], labels: np.ndarray, folds: int, val_fraction: float, seed: int,
                 predict_test: bool) -> list[Job]:
    """Every method on the same split (or the same folds), each with its own recipe."""
    check_split(labels, folds, val_fraction)
    pairs = split_indices(labels, folds, val_fraction, seed)
    jobs = []
    for method in methods:
        cfg = dataclasses.replace(check_method(method).recipe or TrainConfig(), val_fraction=val_fraction, seed=seed)
        for k, (train_rows, scored_rows) in enumerate(pairs):
            name = method + (f"-fold{k}" if folds > 1 else "")
            jobs.append(Job(name, method, cfg, train_rows, scored_rows, keep_model=False, predict_test=predict_test))
    return jobs


def fold_jobs(name: str, method: str, cfg: TrainConfig, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[Job]:
    """The same settings trained on each (train, held-out) pair and scored on its held-out rows: one trial of
    a search (``<name>-fold<k>``), keeping no model."""
    return [Job(f"{name}-fold{k}", method, cfg, train_rows, scored_rows, keep_model=False)
            for k, (train_rows, scored_rows) in enumerate(pairs)]
