"""The run directory: its layout, what made it, and the only code that writes into it.

A run directory holds ``run.json`` (what made it: the kind of run, the method, its settings, the ensemble's
size, a digest of the training data, the rows left out of training and the source of pseudo-labels, if any), the
outputs of the run (``metrics.json``, figures, ``report.html``, ``submission.csv``, ``comparison.csv``, with
``--tensorboard`` the event files under ``tensorboard/``, and the label audit's ``label_issues.csv`` and
``label_issues.png``) and one record per training job: a single run's job at the top, the jobs of an ensemble or
a comparison under ``jobs/<name>/``. A job's record is ``config.json`` (method and settings), its model
(``model.safetensors`` or ``model.skops``) where kept, ``history.csv`` (networks), ``heldout.npz`` (held-out
probabilities) and, written last, ``job.json``: a job whose ``job.json`` exists has finished.

A directory made by other settings is never reused silently: :meth:`RunDir.start` resumes only a run with the
same ``run.json``, and otherwise refuses, or with ``overwrite`` clears the run's files first. ``run.json`` also
lists every file the run has written (``files``, recorded before each is written): those, and the temporary
files of their interrupted writes, are the only files ``overwrite`` and a resumed run ever remove, and a folder
without ``run.json`` is never cleared. Every file is written atomically (:mod:`digit_recognizer.files`).
Everything read back is checked as input from outside: bounded in size, regular files only, every value checked
against the job it belongs to.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .config import HISTORY_COLUMNS, TrainConfig, check_method, completed
from .errors import DataError, InputError, RunDirError, first_line
from .files import atomic_path, check_writable, read_bounded, same_file, temporaries_of, write_json
from .jobs import JobRecord, JobSummary, plan_jobs
from .submission import write_submission

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from .data import Digits
    from .jobs import Job, JobResult

MANIFEST_FILE = "run.json"
METRICS_FILE = "metrics.json"
SUBMISSION_FILE = "submission.csv"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
ERRORS_FILE = "errors.png"
COMPARISON_TABLE = "comparison.csv"
COMPARISON_FIGURE = "comparison.png"
SUBMISSIONS_DIR = "submissions"
JOBS_DIR = "jobs"
REPORT_FILE = "report.html"
TENSORBOARD_DIR = "tensorboard"  # one TensorBoard run per job (tensorboard/<job>/) and one for the run (run/)
# The label audit of a K-fold run (audit.py)
LABEL_ISSUES_TABLE = "label_issues.csv"
LABEL_ISSUES_FIGURE = "label_issues.png"
# A hyper-parameter search (tune.py)
STUDY_FILE = "study.db"
TRIALS_TABLE = "trials.csv"
BEST_CONFIG = "best.toml"
BEST_COMMAND = "best_command.txt"
SEARCH_HISTORY_FIGURE = "search_history.png"
SEARCH_IMPORTANCES_FIGURE = "search_importances.png"
# A job's record
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SKOPS_FILE = "model.skops"
HISTORY_FILE = "history.csv"
HELDOUT_FILE = "heldout.npz"
JOB_FILE = "job.json"
CHECKPOINT_FILE = "checkpoint.pt"


# The names a run writes at the top of its directory: a folder holding any of them without run.json is another
# tool's (or a damaged run's), never mixed into nor cleared.
RUN_FILES = (MANIFEST_FILE, METRICS_FILE, SUBMISSION_FILE, CURVES_FILE, CONFUSION_FILE, ERRORS_FILE,
             COMPARISON_TABLE, COMPARISON_FIGURE, CONFIG_FILE, WEIGHTS_FILE, SKOPS_FILE, HISTORY_FILE,
             HELDOUT_FILE, JOB_FILE, CHECKPOINT_FILE, SUBMISSIONS_DIR, JOBS_DIR, STUDY_FILE, f"{STUDY_FILE}-journal",
             TRIALS_TABLE, BEST_CONFIG, BEST_COMMAND, SEARCH_HISTORY_FIGURE, SEARCH_IMPORTANCES_FIGURE, REPORT_FILE,
             TENSORBOARD_DIR, LABEL_ISSUES_TABLE, LABEL_ISSUES_FIGURE)
FILES = "files"  # run.json's list of every file the run has written, relative to the directory
KINDS = ("single", "ensemble", "compare", "tune", "distill")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_MAX_JSON = 1 << 20  # a run's JSON files are a few KB (run.json's list of files some tens of KB)
_MAX_REPORT = 64 << 20  # report.html inlines a few figures: a few hundred KB
_MAX_FIGURE = 16 << 20
_MAX_HISTORY = 16 << 20  # a row per epoch
_MAX_HELDOUT = 512 << 20  # probabilities of at most a few hundred thousand rows
_MAX_CHECKPOINT = 2 << 30  # weights, optimiser state and a weight average of the largest allowed network
def digest(digits: Digits) -> str:
    """A short fingerprint of a data set: a run resumes only on the data it started with."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.ascontiguousarray(digits.images).data)
    if digits.labels is not None:
        h.update(np.ascontiguousarray(digits.labels, dtype=np.int64).data)
    return h.hexdigest()


def manifest(kind: str, jobs: list[str], **what: object) -> dict:
    """``run.json``'s content: the kind of run, its jobs, and everything that decides their results (settings
    given as a :class:`TrainConfig` are stored without the device, which does not)."""
    what = {key: value.settings() if isinstance(value, TrainConfig) else value for key, value in what.items()}
    # As it will read back from run.json (tuples become lists), so that the same settings compare equal.
    return json.loads(json.dumps({"kind": kind, "jobs": jobs, **what, "version": __version__}))


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def job_dir(self, name: str) -> Path:
        """A job's folder, ``jobs/<name>``; the run directory itself for the run's own network ("")."""
        if name and not _JOB_NAME.fullmatch(name):  # a name read back from a file must not lead out of the run
            raise RunDirError(f"{self.path}: '{name[:80]}' is not a job name (letters, digits, '-' and '_')")
        return self.path / JOBS_DIR / name if name else self.path

    # --- starting ------------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Prove, before any training, that files can be written here; leaves no trace."""
        try:
            check_writable(self.path, directory=True)
        except InputError as err:
            raise RunDirError(str(err)) from None

    def start(self, what: dict, overwrite: bool = False) -> bool:
        """Begin or resume the run described by ``what`` (see :func:`manifest`); returns True when resuming.

        A directory that holds a run made otherwise (other settings, other data, another kind of run) is
        refused, unless ``overwrite``: then the files that run recorded as its own are removed first, and only
        those. A directory holding files of a run's names without ``run.json`` is refused whatever the flag: it
        is not the project's to clear. Resuming removes the temporary files of the run's interrupted writes.
        """
        self.check_writable()
        existing = self.read_manifest() if exists(self.path / MANIFEST_FILE) else None
        if existing is None:
            found = [name for name in RUN_FILES if exists(self.path / name)]
            if found:
                raise RunDirError(f"{self.path}: holds {found[0]} but no {MANIFEST_FILE}, so it is not a run "
                                  "directory of digit-recognizer; choose another --out (--overwrite clears only "
                                  "the files a run recorded as its own, never a folder without run.json)")
        else:
            # Before anything is removed or trained: a file of a run's names there that this run did not write
            # is another's, which a later write (of this run or, after --overwrite, of another kind) would replace.
            self._check_own(existing[FILES], RUN_FILES)
            changed = _differences(existing, what)
            if changed and not overwrite:
                raise RunDirError(f"{self.path}: holds a run made with other settings ({'; '.join(changed[:4])}); "
                                  "run the same command to resume it, choose another --out, "
                                  "or add --overwrite to clear it")
            if overwrite:
                self._clear(existing[FILES])
                existing = None
        if existing is not None:
            for entry in existing[FILES]:
                for tmp in temporaries_of(self.path / entry):
                    tmp.unlink(missing_ok=True)
            return True
        self.path.mkdir(parents=True, exist_ok=True)
        write_json({**what, FILES: [MANIFEST_FILE]}, self.path / MANIFEST_FILE)
        return False

    def _clear(self, files: list[str]) -> None:
        """Remove the files a run recorded (and the temporaries of their interrupted writes), then the folders
        it made that are left empty; ``run.json`` last. A file of another's put into a run's folder stays, and so
        does its folder."""
        root = os.path.realpath(self.path)
        folders = set()
        for entry in sorted(files, key=lambda e: e == MANIFEST_FILE):
            target = self.path / entry
            if not Path(os.path.realpath(target.parent)).is_relative_to(root):
                continue  # a folder replaced by a link out of the directory: nothing there is the run's
            for tmp in temporaries_of(target):
                tmp.unlink(missing_ok=True)
            if target.is_symlink() or target.is_file():
                target.unlink()
            folders.update(p for p in target.parents if p != self.path and p.is_relative_to(self.path))
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()

    def check_own(self, *names: str) -> None:
        """Refuse (RunDirError), before any work, a file of one of ``names`` that the run did not write: another's
        file in the way, which the run would replace."""
        self._check_own(self.read_manifest()[FILES], names)

    def _check_own(self, files: list[str], names: Iterable[str]) -> None:
        for name in names:  # a folder's name is the run's if the run recorded a file in it
            if exists(self.path / name) and name not in files and not any(f.startswith(f"{name}/") for f in files):
                raise RunDirError(f"{self.path / name}: not a file this run wrote, so it is not replaced; move it "
                                  "out of the run directory first")
            if name in files and (self.path / name).is_dir() and not (self.path / name).is_symlink():
                raise RunDirError(f"{self.path / name}: a folder where the run keeps a file; move it away first")

    def check_kept(self, inputs: Iterable[Path | None]) -> None:
        """Refuse (RunDirError), before any work, an input of a command that is one of the files of the run here,
        which ``--overwrite`` removes first (a label audit's list given back to ``--exclude-rows``, say)."""
        if not exists(self.path / MANIFEST_FILE):
            return
        own = [self.path / entry for entry in self.read_manifest()[FILES]]
        for source in inputs:
            if source is not None and any(same_file(source, path) for path in own):
                raise RunDirError(f"{source}: a file of the run in {self.path}, which --overwrite removes before "
                                  "training; copy it out of the run directory first, or choose another --out")

    def record(self, *paths: Path, written: bool = False) -> None:
        """Add ``paths`` to run.json's list of the run's files, before they are written (or, for files whose names
        are known only once ``written``, TensorBoard's, just after). Refuses (RunDirError) a path that is there
        already but is not the run's: nothing of another's is ever replaced."""
        what = self.read_manifest()
        new = [rel for path in paths if (rel := path.relative_to(self.path).as_posix()) not in what[FILES]]
        if not written:
            self._check_own(what[FILES], new)
        if new:
            write_json({**what, FILES: [*what[FILES], *dict.fromkeys(new)]}, self.path / MANIFEST_FILE)

    # --- jobs ----------------------------------------------------------------------------------------------

    def finished(self, name: str) -> bool:
        return exists(self.job_dir(name) / JOB_FILE)

    def write_job(self, result: JobResult) -> JobRecord:
        """Write a finished job's record, ``job.json`` last, drop its checkpoint; returns the record."""
        from .methods import save_estimator  # torch and scikit-learn: only when a job is written (start-up time)

        job = result.job
        folder = self.job_dir(job.name)
        files = [folder / name for name in (CONFIG_FILE, model_file(job.method), HISTORY_FILE, HELDOUT_FILE,
                                            JOB_FILE)]
        self.record(*files)
        write_json({"method": job.method, "train": job.config.settings()}, folder / CONFIG_FILE)
        if result.estimator is not None:
            save_estimator(result.estimator, folder / model_file(job.method))
        if result.history is not None:
            self.write_table(_frame(result.history), HISTORY_FILE, folder)
        arrays = {"scored_rows": job.scored_rows, "proba": result.proba}
        for key in ("proba_tta", "test_proba"):
            if getattr(result, key) is not None:
                arrays[key] = getattr(result, key)
        with atomic_path(folder / HELDOUT_FILE) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        summary = JobSummary(job.name, job.method, float(result.accuracy), round(result.seconds, 2),
                             round(result.predict_seconds, 3), result.where, result.device, len(job.train_rows),
                             len(job.scored_rows), len(result.history or []), result.resources,
                             len(job.pseudo_labels) if job.pseudo_labels is not None else None)
        write_json(summary.to_dict(), folder / JOB_FILE)
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        return JobRecord(job.name, summary, job.scored_rows, result.proba, result.proba_tta, result.test_proba,
                         result.history)

    def read_job(self, job: Job, test_rows: int | None = None) -> JobRecord:
        """A finished job's record, every value checked against ``job`` (its rows, method and epochs) and the
        test set of ``test_rows`` images it predicted; a fault raises RunDirError naming the file."""
        folder = self.job_dir(job.name)
        where = folder / JOB_FILE
        summary = JobSummary.from_dict(self._read_json(where), str(where))
        network = check_method(job.method).network
        expected = {"name": job.name, "method": job.method, "train_rows": len(job.train_rows),
                    "scored_rows": len(job.scored_rows), "epochs": job.config.epochs if network else 0}
        if job.pseudo_labels is not None:  # a reader of a finished run as input plans its jobs without them
            expected["pseudo_labels"] = len(job.pseudo_labels)
        for key, value in expected.items():
            if getattr(summary, key) != value:
                raise RunDirError(f"{where}: '{key}' is {getattr(summary, key)!r}, but the job has {value!r}; "
                                  f"delete {folder} to train that job again, or use --overwrite")
        arrays = _read_heldout(folder / HELDOUT_FILE, job, network, test_rows)
        history = _read_history(folder / HISTORY_FILE, job.config.epochs) if network else None
        return JobRecord(job.name, summary, arrays["scored_rows"], arrays["proba"], arrays.get("proba_tta"),
                         arrays.get("test_proba"), history)

    def checkpoint(self, name: str) -> FileCheckpoint:
        return FileCheckpoint(self.job_dir(name) / CHECKPOINT_FILE, self.record)

    def drop_checkpoint(self, name: str) -> None:
        """Remove a job's checkpoint, and its folder if nothing else is left there (a job kept in a study only)."""
        folder = self.job_dir(name)
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        if name and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def study_storage(self) -> str:
        """The database URL of a search's Optuna study (SQLite, in the run directory)."""
        study = self.path / STUDY_FILE
        self.record(study, *(study.with_name(study.name + end) for end in ("-journal", "-wal", "-shm")))
        return f"sqlite:///{study.resolve()}"

    # --- outputs -------------------------------------------------------------------------------------------

    def write_metrics(self, metrics: dict) -> None:
        self.record(self.path / METRICS_FILE)
        write_json(metrics, self.path / METRICS_FILE)

    def write_figure(self, figure: Figure, name: str) -> None:
        import matplotlib.pyplot as plt

        self.record(self.path / name)
        with atomic_path(self.path / name) as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)

    def write_table(self, table: pd.DataFrame, name: str, folder: Path | None = None) -> None:
        self.record((folder or self.path) / name)
        with atomic_path((folder or self.path) / name) as tmp:
            table.to_csv(tmp, index=False)

    def write_text(self, text: str, name: str) -> None:
        self.record(self.path / name)
        with atomic_path(self.path / name) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def remove(self, name: str) -> None:
        """Remove one of the run's own output files (one that no longer describes the run)."""
        if name in self.read_manifest()[FILES]:
            (self.path / name).unlink(missing_ok=True)

    def write_report(self, html: str) -> None:
        """``report.html``: the run on one self-contained page (see :mod:`digit_recognizer.report`)."""
        self.write_text(html, REPORT_FILE)

    def events_dir(self, name: str) -> Path:
        """A job's TensorBoard run (``tensorboard/<job>/``); the run itself, and a single run's job, is ``run``."""
        return self.path / TENSORBOARD_DIR / (name or "run")

    def write_submission(self, labels: np.ndarray, method: str | None = None) -> Path:
        """``submission.csv``, or a comparison's ``submissions/<method>.csv``."""
        path = self.path / (SUBMISSION_FILE if method is None else Path(SUBMISSIONS_DIR) / f"{method}.csv")
        self.record(path)
        write_submission(labels, path)
        return path

    # --- reading -------------------------------------------------------------------------------------------

    def read_metrics(self) -> dict:
        """``metrics.json``, with the values laid out as counts and tables (the report's) checked."""
        return _check_metrics(self._read_json(self.path / METRICS_FILE), self.path / METRICS_FILE)

    def read_figure(self, name: str) -> bytes | None:
        """A figure's PNG bytes, or None where the run has no such figure (a link is never followed)."""
        path = self.path / name
        if not exists(path):
            return None
        try:
            return read_bounded(path, _MAX_FIGURE, "a figure", follow_links=False)
        except InputError as err:
            raise RunDirError(str(err)) from None

    def read_report(self) -> str | None:
        """``report.html``, or None where the run has none (a run made before reports, a job's folder). Only a
        regular file inside the directory is read: a link (to ``/etc/passwd``, say) is refused."""
        path = self.path / REPORT_FILE
        if not exists(path):
            return None
        try:
            return read_bounded(path, _MAX_REPORT, "a report", follow_links=False).decode("utf-8", "replace")
        except InputError as err:
            raise RunDirError(str(err)) from None

    def read_manifest(self) -> dict:
        """``run.json``, checked: a known kind, job names and file names that stay inside the directory."""
        what = self._read_json(self.path / MANIFEST_FILE)
        where = self.path / MANIFEST_FILE
        if what.get("kind") not in KINDS:
            raise RunDirError(f"{where}: 'kind' must be one of {', '.join(KINDS)}")
        jobs = what.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(n, str) and _JOB_NAME.fullmatch(n) for n in jobs):
            raise RunDirError(f"{where}: 'jobs' must be a list of job names (letters, digits, '-' and '_')")
        if not isinstance(what.get("train", {}), dict):
            raise RunDirError(f"{where}: 'train' must be a table of settings")
        files = what.get(FILES)
        if not isinstance(files, list) or not all(_inside_name(entry) for entry in files):
            raise RunDirError(f"{where}: '{FILES}' must list the run's files by relative paths inside the directory "
                              "(a run directory made by an older version has no such list: choose another --out)")
        return what

    def read_model_config(self, folder: Path) -> tuple[str, TrainConfig]:
        """A job folder's ``config.json``: the method and its settings, checked like any settings file."""
        where = folder / CONFIG_FILE
        config = self._read_json(where)
        unknown = sorted(set(config) - {"method", "train"})
        if unknown:
            raise RunDirError(f"{where}: unknown key '{unknown[0]}'; expected 'method' and 'train'")
        method = config.get("method")
        try:
            if not isinstance(method, str):
                raise ValueError(f"'method' must be a string, got {method!r}")
            check_method(method)
            cfg = TrainConfig.from_dict(config.get("train", {}), "'train'")
            cfg.validate()
        except ValueError as err:
            raise RunDirError(f"{where}: {err}") from None
        return method, cfg

    def _read_json(self, path: Path) -> dict:
        if not exists(path):
            raise RunDirError(f"{path}: not found; is {self.path} a directory made by 'run' or 'train'?")
        try:
            value = json.loads(read_bounded(path, _MAX_JSON).decode("utf-8"))
        except InputError as err:
            raise RunDirError(str(err)) from None
        except (ValueError, RecursionError) as err:
            raise RunDirError(f"{path}: not valid JSON ({str(err)[:200]})") from None
        if not isinstance(value, dict):
            raise RunDirError(f"{path}: expected a JSON object, got {type(value).__name__}")
        return value


class FileCheckpoint:
    """A job's training state between epochs, in one file (tensors and plain values only: loaded with torch's
    ``weights_only`` unpickler, which builds no other objects)."""

    def __init__(self, path: Path, record: Callable[[Path], None] | None = None) -> None:
        self.path = path
        self.record = record  # tells the run directory, before the first save, that the file is the run's

    @property
    def where(self) -> str:
        return str(self.path)

    def load(self) -> dict | None:
        if not exists(self.path):
            return None
        import torch  # only when a checkpoint is read: the command line imports this module (start-up time)

        try:
            data = read_bounded(self.path, _MAX_CHECKPOINT, "a checkpoint")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # any damage to the file, whatever torch raises for it
            raise RunDirError(f"{self.path}: cannot resume from this checkpoint ({first_line(err)}); "
                              "delete it to restart that training, or use --overwrite") from None
        if not isinstance(state, dict):
            raise RunDirError(f"{self.path}: cannot resume from this checkpoint (not a table of training state); "
                              "delete it to restart that training, or use --overwrite")
        return state

    def save(self, state: dict) -> None:
        import torch  # as in load

        if self.record is not None:
            self.record(self.path)
            self.record = None
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


def _read_heldout(path: Path, job: Job, network: bool, test_rows: int | None) -> dict[str, np.ndarray]:
    """A job's ``heldout.npz``, checked against the job: the very rows it was scored on, probabilities of the
    right shape (finite, 0-1), the arrays a job of its kind writes and no others."""
    try:
        with np.load(io.BytesIO(read_bounded(path, _MAX_HELDOUT, "a job's probabilities")),
                     allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
    except InputError as err:
        raise RunDirError(str(err)) from None
    except Exception as err:  # NumPy and zipfile raise many kinds for a damaged archive; none may escape
        raise RunDirError(f"{path}: cannot read ({first_line(err)})") from None
    expected = {"scored_rows", "proba"} | ({"proba_tta"} if network and job.heldout_tta else set()) | (
        {"test_proba"} if job.predict_test and test_rows is not None else set())
    if set(arrays) != expected:
        raise RunDirError(f"{path}: holds {', '.join(sorted(arrays)) or 'nothing'}, expected "
                          f"{', '.join(sorted(expected))}")
    rows = arrays["scored_rows"]
    if rows.dtype.kind not in "iu" or not np.array_equal(rows, job.scored_rows):
        raise RunDirError(f"{path}: 'scored_rows' are not the rows this job is scored on")
    for key, n in (("proba", len(rows)), ("proba_tta", len(rows)), ("test_proba", test_rows)):
        if key in arrays:
            p = arrays[key]
            if p.dtype.kind != "f" or p.shape != (n, 10) or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
                raise RunDirError(f"{path}: '{key}' must be probabilities of shape ({n}, 10), got {p.dtype} "
                                  f"{p.shape}")
    return arrays


def _read_history(path: Path, epochs: int) -> list[dict]:
    """A network's ``history.csv``: one row of finite numbers per epoch, epochs 1 .. ``epochs``."""
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(read_bounded(path, _MAX_HISTORY, "a history")))
        missing = [column for column in HISTORY_COLUMNS if column not in frame.columns]
        if missing:
            raise ValueError(f"no column '{missing[0]}'")
        values = frame[list(HISTORY_COLUMNS)].to_numpy(dtype=np.float64)
    except InputError as err:
        raise RunDirError(str(err)) from None
    except (ValueError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise RunDirError(f"{path}: not a history of epochs ({first_line(err)})") from None
    if not np.isfinite(values).all() or not np.array_equal(values[:, 0], np.arange(1, len(values) + 1)):
        raise RunDirError(f"{path}: not a history of epochs (non-finite values, or epochs not numbered 1, 2, ...)")
    if len(values) != epochs:
        raise RunDirError(f"{path}: {len(values)} epochs, but the job trains {epochs}")
    return [{column: (int(value) if column == "epoch" else float(value))
             for column, value in zip(HISTORY_COLUMNS, row, strict=True)} for row in values]


# --- a finished run read back as the input of another command (the label audit, distillation) -----------------

@dataclass(frozen=True)
class TrainedRun:
    """What ``run.json`` says made a run of ``run`` or ``train`` (a single run or an ensemble), every value checked."""

    path: Path
    kind: str              # "single" or "ensemble"
    method: str
    cfg: TrainConfig
    members: int
    folds: int
    exclude_rows: list[int]
    data: str              # the digest of the training data
    jobs: list[str]        # as run.json lists them (a single run's one job, at the top, has no name)


_MADE_BY = {"compare": "a comparison of methods", "tune": "a search of settings", "distill": "a distilled network"}


def read_trained_run(path: str | Path, use: str) -> TrainedRun:
    """The run of ``run`` or ``train`` in ``path``, from its ``run.json``; refuses (RunDirError naming the file) a
    directory that is not such a run. ``use`` ends the message: what the reader needs instead."""
    run_dir = RunDir(path)
    what = run_dir.read_manifest()
    where = run_dir.path / MANIFEST_FILE
    kind = what["kind"]
    if kind not in ("single", "ensemble"):
        raise RunDirError(f"{where}: {_MADE_BY[kind]}, not a run made by 'run' or 'train'; {use}")
    method, members, folds, train = what.get("method"), what.get("members"), what.get("folds"), what.get("train")
    try:
        if not isinstance(method, str) or not check_method(method).network:
            raise ValueError(f"'method' must name a network, got {str(method)[:40]!r}")
        if not _whole(folds) or folds < 1:
            raise ValueError(f"'folds' must be a whole number of at least 1, got {str(folds)[:20]!r}")
        jobs = len(what["jobs"]) if kind == "ensemble" else len(what["jobs"]) + 1  # a single run's job is unnamed
        if not _whole(members) or members < 1 or members * folds != jobs or (kind == "single" and jobs != 1):
            raise ValueError(f"'members' ({str(members)[:20]}) x 'folds' ({folds}) must be its number of jobs "
                             f"({jobs})")
        if not isinstance(train, dict):
            raise ValueError("'train' must be a table of settings")
        cfg = TrainConfig.from_dict(completed(train), "'train'")
        cfg.validate()
        exclude = what.get("exclude_rows", [])
        if not isinstance(exclude, list) or not all(_whole(row) for row in exclude):
            raise ValueError("'exclude_rows' must be a list of row numbers")
        if not isinstance(what.get("data"), str):
            raise ValueError("'data' must be the digest of the training data")
    except ValueError as err:
        raise RunDirError(f"{where}: {first_line(err)}") from None
    return TrainedRun(run_dir.path, kind, method, cfg, members, folds, exclude, what["data"], what["jobs"])


def read_trained_records(run: TrainedRun, digits: Digits, source: str = "the training data",
                         ) -> list[tuple[Job, JobRecord]]:
    """Every job of ``run`` with its record, planned again exactly as the run planned them (member by member, fold
    by fold, its excluded rows included) and each record checked against its job. ``digits`` must be the run's
    training data (``source`` names it in the message when it is not); an unfinished run is refused."""
    run_dir, where = RunDir(run.path), run.path / MANIFEST_FILE
    if digest(digits) != run.data:
        raise DataError(f"{source}: not the training data of the run in {run.path} (its digest is {digest(digits)}, "
                        f"run.json records {run.data}); give the train.csv the run was trained on")
    try:
        jobs = plan_jobs(run.method, run.cfg, digits.labels, run.members, run.folds, run.exclude_rows)
    except ValueError as err:  # an exclusion list out of range, say
        raise RunDirError(f"{where}: {first_line(err)}") from None
    if [job.name for job in jobs if job.name] != run.jobs:
        raise RunDirError(f"{where}: 'jobs' are not the jobs of its members and folds")
    unfinished = [job.name for job in jobs if not run_dir.finished(job.name)]
    if unfinished:
        raise RunDirError(f"{run.path}: unfinished ({len(jobs) - len(unfinished)} of {len(jobs)} jobs done"
                          + (f", {unfinished[0]} not" if unfinished[0] else "")
                          + "); run the same command again to finish it first")
    return [(job, run_dir.read_job(job)) for job in jobs]


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_metrics(metrics: dict, where: Path) -> dict:
    """``metrics`` as read from ``where``, refused (RunDirError) where a value laid out as a count or a table is not
    of its kind; each may be absent."""
    def rows(value: object, *lists: str) -> bool:  # a list of tables, whose ``lists`` entries are lists if there
        return isinstance(value, list) and all(
            isinstance(row, dict) and all(isinstance(row.get(key, []), list) for key in lists) for row in value)

    faults = {key: "a whole number >= 0" for key in ("rows_scored", "n_val") if not _whole(metrics.get(key, 0))}
    per_class = metrics.get("per_class", [])
    if not rows(per_class) or not all(all(_whole(row.get(key)) for key in ("digit", "images", "correct"))
                                      and (row.get("accuracy") is None or _finite(row["accuracy"]))
                                      for row in per_class):
        faults["per_class"] = "a list of rows of a digit, its images, correct predictions and accuracy"
    if not rows(metrics.get("table", [])):
        faults["table"] = "a list of rows"
    execution = metrics.get("execution", {})
    if not isinstance(execution, dict) or not rows(execution.get("jobs", [])):
        faults["execution"] = "a table whose 'jobs' are a list of rows"
    pseudo = metrics.get("pseudo_labels", {})
    if pseudo is not None and (not isinstance(pseudo, dict) or not rows(pseudo.get("folds", []), "teachers")):
        faults["pseudo_labels"] = "a table whose 'folds' are a list of rows, each with a list of teachers"
    if faults:
        key, kind = next(iter(faults.items()))
        raise RunDirError(f"{where}: '{key}' must be {kind}")
    return metrics


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def exists(path: Path) -> bool:
    """Whether anything is there, a dangling link included."""
    return path.is_symlink() or path.exists()


def _inside_name(entry: object) -> bool:
    """A file name of run.json's list: a relative path that cannot leave the directory."""
    if not isinstance(entry, str) or not entry or "\\" in entry:
        return False
    parts = PurePosixPath(entry).parts
    return not PurePosixPath(entry).is_absolute() and all(p not in ("", ".", "..") for p in parts) and len(parts) <= 4


def model_file(method: str) -> str:
    """The name of a method's model file in its job folder."""
    return WEIGHTS_FILE if check_method(method).network else SKOPS_FILE


def _frame(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between two manifests, as 'key old -> new' (nested settings by their own names)."""
    changed = []
    for key in sorted((set(old) | set(new)) - {"version", FILES}):
        a, b = old.get(key), new.get(key)
        if key == "train" and isinstance(a, dict):
            a = completed(a)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            # Data, row lists and a table added or dropped by name only: digests, numbers, paths.
            changed.append(f"{key} {a!r} -> {b!r}" if key not in ("data", "test_data", "exclude_rows", "pseudo_labels")
                           else f"other {key}")
    return changed
