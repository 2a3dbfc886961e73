"""Hyper-parameter search: an Optuna study whose trials are scored out of fold by the project's training jobs.

A trial is one choice of settings from the search space, trained on each of K stratified folds (the same folds
for every trial) and scored on the fold it did not train on; its value is the mean of the K held-out
accuracies. Each fold is a :class:`~digit_recognizer.jobs.Job` run by an executor: in this process one trial
after another, or on a Ray cluster several trials at once. After each fold, a trial that could not beat the
best finished trial even with every remaining fold perfect is stopped (:class:`CannotBeatBest`).

The study lives in ``OUT/study.db`` (SQLite): the same command run again adds trials to it. A trial that was
under way when a search was interrupted is marked failed and tried again first, keeping its finished folds
(and, in this process, resuming its unfinished fold from its last epoch). The outputs (``trials.csv``,
``best.toml``, the figures, ``best_command.txt``) are written from the whole study at the end of each search.

The search space is :mod:`digit_recognizer.tune_space`'s; the outputs, :mod:`digit_recognizer.tune_outputs`'s.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from .config import TrainConfig, check_method
from .console import format_duration, show_bars
from .data import Digits, split_indices
from .errors import TrainingDiverged, first_line
from .execute import Executor, InProcess
from .jobs import Job, JobResult, check_split, fold_jobs
from .rundir import (
    STUDY_FILE,
    RunDir,
    RunDirError,
    digest,
    manifest,
)
from .tune_outputs import write_outputs
from .tune_space import Param, label

STUDY_NAME = "tune"
SQLITE_MAGIC = b"SQLite format 3\x00"



# --- pruning ---------------------------------------------------------------------------------------------------

def best_possible(mean: float, done: int, folds: int) -> float:
    """The highest mean over ``folds`` folds a trial can still reach after ``done`` folds averaging ``mean``."""
    return (mean * done + (folds - done)) / folds


class CannotBeatBest(optuna.pruners.BasePruner):
    """Stop a trial after a fold when, even with a perfect score on every remaining fold, its mean could not
    beat the best finished trial. Never stops a trial that could still win."""

    def __init__(self, folds: int) -> None:
        self.folds = folds

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step >= self.folds:
            return False
        try:
            best = study.best_value
        except ValueError:  # no finished trial yet
            return False
        return best_possible(trial.intermediate_values[step], step, self.folds) <= best


# --- the search ------------------------------------------------------------------------------------------------

def tune(
    digits: Digits, out: str | Path, method: str, base: TrainConfig, space: dict[str, Param], trials: int = 20,
    folds: int = 3, timeout: float | None = None, executor: Executor | None = None, progress: bool = True,
    overwrite: bool = False, data_dir: str | Path | None = None,
) -> dict:
    """Add ``trials`` trials (fewer if ``timeout`` seconds pass first) to the study in ``out`` and write its
    outputs; returns a summary with the best trial and the command that trains its settings.

    ``base`` holds the settings not searched (the recipe, flags, a config file); ``space`` what is searched
    (:func:`make_space`). ``data_dir`` only goes into the command line written for the best trial.
    """
    if not check_method(method).network:
        raise ValueError(f"tune searches a network's settings; '{method}' is not a network")
    if trials < 1:
        raise ValueError("trials must be at least 1")
    base.validate()
    check_split(digits.labels, folds, base.val_fraction)
    pairs = split_indices(digits.labels, folds, base.val_fraction, base.seed)  # every trial's folds
    run_dir = RunDir(out)
    run_dir.start(manifest("tune", [], method=method, train=base, folds=folds,
                           space={name: param.to_dict() for name, param in space.items()}, data=digest(digits)),
                  overwrite)
    executor = executor or InProcess(base.device)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = open_study(run_dir, space, folds)
        study.pruner = CannotBeatBest(folds)
        search = _Search(study, digits, run_dir, executor, method, base, space, pairs, progress)
        search.run(trials, timeout)
        return write_outputs(study, run_dir, method, space, folds, data_dir)


def open_study(run_dir: RunDir, space: dict[str, Param], folds: int) -> optuna.Study:
    """The run directory's study, created or continued; a study file that is not one (text, truncated, a
    directory) or whose trials lack or mangle their settings raises RunDirError before any trial runs."""
    path = run_dir.path / STUDY_FILE
    storage = run_dir.study_storage()
    if path.is_symlink() or path.exists():
        head = None
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                head = handle.read(len(SQLITE_MAGIC))
        if head is None or (head and head != SQLITE_MAGIC):  # an empty file is a new database to SQLite
            raise RunDirError(f"{path}: not an SQLite study; use --overwrite to start a new search")
    try:
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize",
                                    load_if_exists=True)
        trials = study.get_trials(deepcopy=False)
    except Exception as err:  # SQLite and SQLAlchemy raise many kinds for a damaged database
        raise RunDirError(f"{path}: cannot read the study ({first_line(err)}); use --overwrite to start a new "
                          "search") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE or optuna.get_all_study_names(storage) != [STUDY_NAME]:
        raise RunDirError(f"{path}: not this project's study (one study, '{STUDY_NAME}', maximising accuracy); use "
                          "--overwrite to start a new search")
    for trial in trials:
        fault = _trial_fault(trial, space, folds)
        if fault:
            raise RunDirError(f"{path}: trial {trial.number}: {fault}; use --overwrite to start a new search")
    return study


def _trial_fault(trial: FrozenTrial, space: dict[str, Param], folds: int) -> str | None:
    """What is wrong with a trial read back from the study, or None."""
    attrs = trial.user_attrs
    if "config" in attrs or trial.state == TrialState.COMPLETE:
        try:
            TrainConfig.from_dict(attrs.get("config"), "its settings").validate()
        except (ValueError, TypeError) as err:
            return str(err)
    for name, distribution in trial.distributions.items():  # a retried trial is asked with these again
        if name not in space or distribution != space[name].distribution():
            return f"its setting {name} is drawn from {distribution}, not from the searched space"
        if not space[name].holds(trial.params[name]):
            return f"its setting {name} = {trial.params[name]!r} is outside the searched space"
    retry = attrs.get("retry_of", trial.number)
    if isinstance(retry, bool) or not isinstance(retry, int) or not 0 <= retry <= trial.number:
        return "its record of the trial it retries is damaged"
    if trial.state == TrialState.COMPLETE:
        if set(trial.params) != set(space):
            return f"its settings are {sorted(trial.params)}, not the searched {sorted(space)}"
        if not (isinstance(trial.value, float) and 0 <= trial.value <= 1):
            return f"its value {trial.value!r} is not an accuracy"
    recorded = attrs.get("folds", {})
    if not isinstance(recorded, dict) or not all(
            isinstance(k, str) and k.isdigit() and int(k) < folds and isinstance(v, dict)
            and isinstance(v.get("accuracy"), float | int) and 0 <= v["accuracy"] <= 1 for k, v in recorded.items()):
        return "its record of finished folds is damaged"
    return None


@dataclass
class _Trial:
    """A trial under way: its settings, its jobs, and its finished folds."""

    trial: optuna.Trial
    jobs: list[Job]
    fold_of: dict[str, int]
    folds: dict[int, dict]
    started: float = field(default_factory=time.monotonic)
    told: bool = False
    stop: threading.Event = field(default_factory=threading.Event)


class _Search:
    def __init__(self, study: optuna.Study, digits: Digits, run_dir: RunDir, executor: Executor, method: str,
                 base: TrainConfig, space: dict[str, Param], pairs: list, progress: bool) -> None:
        self.study, self.digits, self.run_dir, self.executor = study, digits, run_dir, executor
        self.method, self.base, self.space, self.pairs, self.progress = method, base, space, pairs, progress
        self.n_folds = len(pairs)
        self.width = _trials_at_once(executor, self.n_folds)
        earlier = len(study.trials)
        # Seeded by the study's size: reproducible, and a resumed search does not draw its first trials again.
        study.sampler = optuna.samplers.TPESampler(seed=base.seed + earlier, constant_liar=True)
        retried = self._retry_interrupted()
        recipe = None if earlier else self._recipe_params()
        if recipe is not None:
            study.enqueue_trial(recipe, user_attrs={"recipe": True})  # trial 0: the baseline
        if progress:
            note = f"; {earlier} trials already in {run_dir.path / STUDY_FILE}" if earlier else ""
            note += f", {retried} interrupted, tried again first" if retried else ""
            note += f"; {self.width} trials at a time" if self.width > 1 else ""
            tqdm.write(f"tuning {method}: {len(digits):,} digits, {self.n_folds} folds per trial, searching "
                       f"{', '.join(param.summary() for param in space.values())}{note}", file=sys.stderr)

    def _retry_interrupted(self) -> int:
        """Mark the trials a stopped search left running as failed, and queue their settings to be tried again,
        with the folds they finished."""
        stale = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in stale:
            self.study.tell(trial.number, state=TrialState.FAIL)
            attrs = {"retry_of": trial.user_attrs.get("retry_of", trial.number),
                     "folds": trial.user_attrs.get("folds", {})}
            if trial.user_attrs.get("recipe"):  # the retried recipe stays the baseline the summary compares with
                attrs["recipe"] = True
            self.study.enqueue_trial(trial.params, user_attrs=attrs)
        return len(stale)

    def _recipe_params(self) -> dict | None:
        """The searched settings at the recipe's own values (``base``), when the space holds them all."""
        params = {}
        for name, param in self.space.items():
            value = getattr(self.base, name)
            if param.choices is not None:
                if value not in param.choices:
                    return None
                params[name] = label(value) if isinstance(value, tuple) else value
            elif not param.low <= value <= param.high:
                return None
            else:
                params[name] = value
        return params

    # --- driving ---

    def run(self, trials: int, timeout: float | None) -> None:
        self.total, self.started, self.asked, self.done = trials, time.monotonic(), 0, 0
        self.deadline = None if timeout is None else self.started + timeout
        self.bar = tqdm(total=trials, desc="trials", unit="trial", file=sys.stderr,
                        disable=not (self.progress and show_bars()))
        try:
            if self.width == 1:
                self._run_here()
            else:
                self._run_parallel()
        finally:
            self.bar.close()
        if self.progress and self.done < trials:
            tqdm.write(f"time budget spent after {self.done} of {trials} trials", file=sys.stderr)

    def _more(self) -> bool:
        return self.asked < self.total and (self.deadline is None or time.monotonic() < self.deadline)

    def _run_here(self) -> None:
        """One trial after another, each fold in turn; a pruned trial stops between folds."""
        while self._more():
            t = self._ask()
            if t.jobs and not t.told:
                results = self.executor(t.jobs, self.digits, None, self.run_dir, False)
                try:
                    for result in results:
                        if self._on_result(t, result):
                            break
                except TrainingDiverged as err:
                    self._fail(t, err)
                finally:
                    results.close()
            self._finish(t)

    def _run_parallel(self) -> None:
        """Several trials at once, each trial's folds run by the executor in a thread of its own; the study is
        asked and told only here, as results arrive."""
        events: queue.Queue = queue.Queue()
        running: dict[int, _Trial] = {}
        try:
            while True:
                while len(running) < self.width and self._more():
                    t = self._ask()
                    running[t.trial.number] = t
                    threading.Thread(target=_work, args=(self.executor, t, self.digits, self.run_dir, events),
                                     daemon=True).start()
                if not running:
                    return
                number, item = events.get()
                t = running[number]
                if item is None:  # its thread has ended
                    del running[number]
                    self._finish(t)
                elif t.told:  # a pruned trial's last fold: its outcome no longer counts
                    continue
                elif isinstance(item, TrainingDiverged):
                    self._fail(t, item)
                elif isinstance(item, BaseException):
                    raise item
                elif self._on_result(t, item):
                    t.stop.set()
        finally:
            for t in running.values():
                t.stop.set()

    # --- one trial ---

    def _ask(self) -> _Trial:
        self.asked += 1
        trial = self.study.ask()
        params = {name: param.suggest(trial) for name, param in self.space.items()}
        # Valid by construction: the base was validated by tune(), and every bound and choice by check_space.
        cfg = TrainConfig.from_dict({**self.base.to_dict(), **params})
        trial.set_user_attr("config", cfg.settings())
        origin = trial.user_attrs.get("retry_of", trial.number)  # a retried trial resumes the original's folds
        jobs = fold_jobs(f"trial{origin}", self.method, cfg, self.pairs)
        finished = {int(k): v for k, v in trial.user_attrs.get("folds", {}).items()}
        t = _Trial(trial, [job for k, job in enumerate(jobs) if k not in finished],
                   {job.name: k for k, job in enumerate(jobs)}, finished)
        for step in range(1, len(finished) + 1):
            trial.report(float(np.mean([f["accuracy"] for f in list(finished.values())[:step]])), step)
        if finished and len(finished) < self.n_folds and trial.should_prune():
            self._prune(t)
        return t

    def _on_result(self, t: _Trial, result: JobResult) -> bool:
        """Record a finished fold; True when the trial is pruned."""
        t.folds[t.fold_of[result.job.name]] = {"accuracy": float(result.accuracy), "seconds": round(result.seconds, 1),
                                               "where": result.where}
        t.trial.set_user_attr("folds", {str(k): fold for k, fold in t.folds.items()})
        self.run_dir.drop_checkpoint(result.job.name)
        t.trial.report(self._mean(t), len(t.folds))
        if len(t.folds) < self.n_folds and t.trial.should_prune():
            self._prune(t)
            return True
        return False

    def _finish(self, t: _Trial) -> None:
        if t.told:
            return
        self.study.tell(t.trial, self._mean(t))
        self._told(t, f"accuracy {self._mean(t):.4f}")

    def _prune(self, t: _Trial) -> None:
        self.study.tell(t.trial, state=TrialState.PRUNED)
        self._told(t, f"pruned after {len(t.folds)} of {self.n_folds} folds at {self._mean(t):.4f}")

    def _fail(self, t: _Trial, err: Exception) -> None:
        message = str(err).splitlines()[0][:200]
        t.trial.set_user_attr("error", message)
        self.study.tell(t.trial, state=TrialState.FAIL)
        self._told(t, f"failed ({message})")

    def _told(self, t: _Trial, outcome: str) -> None:
        t.told = True
        self.done += 1
        self.bar.update()
        try:
            best = f"best {self.study.best_value:.4f}"
        except ValueError:
            best = "no finished trial yet"
        self.bar.set_postfix_str(best, refresh=False)
        if self.progress:
            now = time.monotonic()
            left = (now - self.started) / self.done * (self.total - self.done)
            if self.deadline is not None:
                left = min(left, max(0.0, self.deadline - now))
            eta = f", ETA {format_duration(left)}" if self.done < self.total and left > 0 else ""
            tqdm.write(f"trial {self.done}/{self.total}: {outcome} ({best}), {now - t.started:.0f}s{eta}",
                       file=sys.stderr)

    def _mean(self, t: _Trial) -> float:
        return float(np.mean([fold["accuracy"] for fold in t.folds.values()]))


def _work(executor: Executor, t: _Trial, digits: Digits, run_dir: RunDir, events: queue.Queue) -> None:
    """A trial's folds, in a thread: each result (or the error that ended them) goes to ``events``, then None."""
    try:
        if t.jobs and not t.told:
            results = executor(t.jobs, digits, None, run_dir, False)
            try:
                for result in results:
                    events.put((t.trial.number, result))
                    if t.stop.is_set():  # pruned: the executor cancels the remaining folds
                        break
            finally:
                results.close()
    except Exception as err:
        events.put((t.trial.number, err))
    events.put((t.trial.number, None))


def _trials_at_once(executor: Executor, folds: int) -> int:
    """As many trials as the cluster has room for all their folds (at least one); one in this process."""
    slots = getattr(executor, "slots", None)
    return 1 if slots is None else max(1, math.ceil(slots() / folds))


