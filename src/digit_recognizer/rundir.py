"""The run directory: its layout, what made it, and the only code that writes into it.

A run directory holds ``run.json`` (what made it: the kind of run, the method, its settings, the ensemble's
size and a digest of the training data), the outputs of the run (``metrics.json``, figures, ``report.html``,
``submission.csv``, ``comparison.csv``, and with ``--tensorboard`` the event files under ``tensorboard/``) and
one record per training job: a single run's job at the top, the jobs of an ensemble
or a comparison under ``jobs/<name>/``. A job's record is ``config.json`` (method and settings), its model
(``model.safetensors`` or ``model.skops``) where kept, ``history.csv`` (networks), ``heldout.npz`` (held-out
probabilities) and, written last, ``job.json``: a job whose ``job.json`` exists has finished.

A directory made by other settings is never reused silently: :meth:`RunDir.start` resumes only a run with the
same ``run.json``, and otherwise refuses, or with ``overwrite`` clears the run's files first. Every file is
written atomically (:mod:`digit_recognizer.files`), and the temporary files of an interrupted write are removed
when the next run starts. Everything read back is checked as input from outside.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .config import TrainConfig, check_method
from .files import atomic_path, check_writable, write_json

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from sklearn.base import BaseEstimator

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

# Everything a run writes: what --overwrite clears, and what marks a directory as holding a run.
RUN_FILES = (MANIFEST_FILE, METRICS_FILE, SUBMISSION_FILE, CURVES_FILE, CONFUSION_FILE, ERRORS_FILE,
             COMPARISON_TABLE, COMPARISON_FIGURE, CONFIG_FILE, WEIGHTS_FILE, SKOPS_FILE, HISTORY_FILE,
             HELDOUT_FILE, JOB_FILE, CHECKPOINT_FILE, SUBMISSIONS_DIR, JOBS_DIR, STUDY_FILE, f"{STUDY_FILE}-journal",
             TRIALS_TABLE, BEST_CONFIG, BEST_COMMAND, SEARCH_HISTORY_FIGURE, SEARCH_IMPORTANCES_FIGURE, REPORT_FILE,
             TENSORBOARD_DIR)
KINDS = ("single", "ensemble", "compare", "tune")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_MAX_JSON = 1 << 20  # a run's JSON files are a few KB; anything far larger is not one of ours
_MAX_REPORT = 64 << 20  # report.html inlines a few figures: a few hundred KB
# Event files of TensorBoard, by who writes them: a job's (per-epoch scalars), or the run's (figures, settings
# with the final metrics). Each writer replaces only its own files, so either can be written again.
JOB_EVENTS, RUN_EVENTS = ".job", ".run"
FINAL_METRICS = ("val_accuracy", "val_loss", "single_model_accuracy", "ensemble_accuracy", "ensemble_accuracy_tta",
                 "ensemble_loss")


class RunDirError(ValueError):
    """A run directory, or a model directory, that cannot be used; the message names the file and the fault."""


@dataclass
class JobRecord:
    """A finished job as read back from its folder."""

    name: str
    summary: dict                   # job.json
    scored_rows: np.ndarray
    proba: np.ndarray
    proba_tta: np.ndarray | None
    test_proba: np.ndarray | None
    history: list[dict] | None


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
    what = {key: _settings(value) if isinstance(value, TrainConfig) else value for key, value in what.items()}
    # As it will read back from run.json (tuples become lists), so that the same settings compare equal.
    return json.loads(json.dumps({"kind": kind, "jobs": jobs, **what, "version": __version__}))


class RunDir:
    def __init__(self, path: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.tensorboard = tensorboard  # also log each finished job to TensorBoard (tensorboard/<job>/)

    def job_dir(self, name: str) -> Path:
        return self.path / JOBS_DIR / name if name else self.path

    # --- starting ------------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Prove, before any training, that files can be written here; leaves no trace."""
        try:
            check_writable(self.path, directory=True)
        except ValueError as err:
            raise RunDirError(str(err)) from None

    def start(self, what: dict, overwrite: bool = False) -> bool:
        """Begin or resume the run described by ``what`` (see :func:`manifest`); returns True when resuming.

        A directory that holds a run made otherwise (other settings, other data, another kind of run, or files
        of a run without ``run.json``) is refused, unless ``overwrite``: then the run's files are removed first
        (and only those). Temporary files of an interrupted write are removed either way.
        """
        self.check_writable()
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        if overwrite:
            self.clear()
        existing = self._read_json(self.path / MANIFEST_FILE) if (self.path / MANIFEST_FILE).is_file() else None
        if existing is None and any((self.path / name).exists() for name in RUN_FILES):
            raise RunDirError(f"{self.path}: holds the outputs of another run (no {MANIFEST_FILE}); "
                              "choose another --out, or add --overwrite to clear it")
        if existing is not None:
            changed = _differences(existing, what)
            if changed:
                raise RunDirError(f"{self.path}: holds a run made with other settings ({'; '.join(changed[:4])}); "
                                  "run the same command to resume it, choose another --out, "
                                  "or add --overwrite to clear it")
            return True
        write_json(what, self.path / MANIFEST_FILE)
        return False

    def clear(self) -> None:
        """Remove the files a run writes (and nothing else)."""
        for name in RUN_FILES:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    # --- jobs ----------------------------------------------------------------------------------------------

    def finished(self, name: str) -> bool:
        return (self.job_dir(name) / JOB_FILE).is_file()

    def write_job(self, result: JobResult) -> None:
        """Write a finished job's record, ``job.json`` last, and drop its checkpoint."""
        from .methods import save_estimator

        job = result.job
        folder = self.job_dir(job.name)
        write_json({"method": job.method, "train": _settings(job.config)}, folder / CONFIG_FILE)
        if result.estimator is not None:
            save_estimator(result.estimator, folder / _model_file(job.method))
        if result.history is not None:
            self.write_table(_frame(result.history), HISTORY_FILE, folder)
        arrays = {"scored_rows": job.scored_rows, "proba": result.proba}
        for key in ("proba_tta", "test_proba"):
            if getattr(result, key) is not None:
                arrays[key] = getattr(result, key)
        with atomic_path(folder / HELDOUT_FILE) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        write_json({"name": job.name, "method": job.method, "accuracy": result.accuracy,
                    "seconds": round(result.seconds, 2), "predict_seconds": round(result.predict_seconds, 3),
                    "where": result.where, "device": result.device, "train_rows": len(job.train_rows),
                    "scored_rows": len(job.scored_rows), "epochs": len(result.history or []),
                    "resources": result.resources}, folder / JOB_FILE)
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        if self.tensorboard:
            self.write_job_events(job, result.history, result.accuracy)

    def read_job(self, name: str) -> JobRecord:
        folder = self.job_dir(name)
        summary = self._read_json(folder / JOB_FILE)
        try:
            with np.load(folder / HELDOUT_FILE, allow_pickle=False) as saved:
                arrays = {key: saved[key] for key in saved.files}
        except (OSError, ValueError, KeyError) as err:
            raise RunDirError(f"{folder / HELDOUT_FILE}: cannot read ({err})") from None
        history = None
        if (folder / HISTORY_FILE).is_file():
            import pandas as pd

            history = pd.read_csv(folder / HISTORY_FILE).to_dict("records")
        return JobRecord(name, summary, arrays["scored_rows"], arrays["proba"], arrays.get("proba_tta"),
                         arrays.get("test_proba"), history)

    def checkpoint(self, name: str) -> FileCheckpoint:
        return FileCheckpoint(self.job_dir(name) / CHECKPOINT_FILE)

    def drop_checkpoint(self, name: str) -> None:
        """Remove a job's checkpoint, and its folder if nothing else is left there (a job kept in a study only)."""
        folder = self.job_dir(name)
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        if name and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def study_storage(self) -> str:
        """The database URL of a search's Optuna study (SQLite, in the run directory)."""
        return f"sqlite:///{(self.path / STUDY_FILE).resolve()}"

    # --- outputs -------------------------------------------------------------------------------------------

    def write_metrics(self, metrics: dict) -> None:
        write_json(metrics, self.path / METRICS_FILE)

    def write_figure(self, figure: Figure, name: str) -> None:
        import matplotlib.pyplot as plt

        with atomic_path(self.path / name) as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)

    def write_table(self, table: pd.DataFrame, name: str, folder: Path | None = None) -> None:
        with atomic_path((folder or self.path) / name) as tmp:
            table.to_csv(tmp, index=False)

    def write_text(self, text: str, name: str) -> None:
        with atomic_path(self.path / name) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def write_report(self, html: str) -> None:
        """``report.html``: the run on one self-contained page (see :mod:`digit_recognizer.report`)."""
        self.write_text(html, REPORT_FILE)

    def events_dir(self, name: str) -> Path:
        """A job's TensorBoard run (``tensorboard/<job>/``); the run itself, and a single run's job, is ``run``."""
        return self.path / TENSORBOARD_DIR / (name or "run")

    def has_job_events(self, name: str) -> bool:
        return any(self.events_dir(name).glob(f"events.out.tfevents.*{JOB_EVENTS}"))

    def write_job_events(self, job: Job, history: list[dict] | None, accuracy: float) -> None:
        """A finished job's per-epoch scalars; a job of an ensemble also gets its own settings (its seed) and its
        held-out accuracy as hyper-parameters, so that TensorBoard shows each member as a run of its own."""
        from .report import write_events

        hparams = {"job": job.name, "method": job.method, **_settings(job.config)} if job.name else None
        metrics = {"final/held_out_accuracy": accuracy} if job.name else None
        write_events(self.events_dir(job.name), JOB_EVENTS, history=history, hparams=hparams, metrics=metrics)

    def write_run_events(self, metrics: dict) -> None:
        """The run's confusion matrix and error gallery as images, and its settings (``run.json``) with its final
        metrics as hyper-parameters, in ``tensorboard/run/``."""
        from .report import write_events

        what = self.read_manifest()
        hparams = {key: what[key] for key in ("kind", "method", "members", "folds") if key in what}
        hparams.update(what.get("train", {}))
        images = {tag: (self.path / name).read_bytes() for tag, name in (("confusion_matrix", CONFUSION_FILE),
                                                                         ("errors", ERRORS_FILE))
                  if (self.path / name).is_file()}
        final = {f"final/{key}": metrics[key] for key in FINAL_METRICS if key in metrics}
        write_events(self.events_dir(""), RUN_EVENTS, hparams=hparams, metrics=final, images=images)

    def write_submission(self, labels: np.ndarray, method: str | None = None) -> Path:
        """``submission.csv``, or a comparison's ``submissions/<method>.csv``."""
        from .predict import write_submission

        path = self.path / (SUBMISSION_FILE if method is None else Path(SUBMISSIONS_DIR) / f"{method}.csv")
        write_submission(labels, path)
        return path

    # --- reading -------------------------------------------------------------------------------------------

    def read_metrics(self) -> dict:
        return self._read_json(self.path / METRICS_FILE)

    def read_figure(self, name: str) -> bytes | None:
        """A figure's PNG bytes, or None where the run has no such figure."""
        path = self.path / name
        return path.read_bytes() if path.is_file() else None

    def read_report(self) -> str | None:
        """``report.html``, or None where the run has none (a run made before reports, a job's folder)."""
        path = self.path / REPORT_FILE
        if not path.is_file():
            return None
        if path.stat().st_size > _MAX_REPORT:
            raise RunDirError(f"{path}: {path.stat().st_size:,} bytes is far more than a report holds")
        return path.read_text(encoding="utf-8", errors="replace")

    def read_manifest(self) -> dict:
        """``run.json``, checked: a known kind and job names that stay inside the directory."""
        what = self._read_json(self.path / MANIFEST_FILE)
        where = self.path / MANIFEST_FILE
        if what.get("kind") not in KINDS:
            raise RunDirError(f"{where}: 'kind' must be one of {', '.join(KINDS)}")
        jobs = what.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(n, str) and _JOB_NAME.fullmatch(n) for n in jobs):
            raise RunDirError(f"{where}: 'jobs' must be a list of job names (letters, digits, '-' and '_')")
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
        try:
            if path.stat().st_size > _MAX_JSON:
                raise ValueError(f"{path.stat().st_size:,} bytes is far more than such a file holds")
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{path}: not found; is {self.path} a directory made by 'run' or 'train'?") from None
        except (OSError, ValueError, RecursionError) as err:
            raise RunDirError(f"{path}: not valid JSON ({str(err)[:200]})") from None
        if not isinstance(value, dict):
            raise RunDirError(f"{path}: expected a JSON object, got {type(value).__name__}")
        return value


class FileCheckpoint:
    """A job's training state between epochs, in one file (tensors and plain values only: loaded with torch's
    ``weights_only`` unpickler, which builds no other objects)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        import torch

        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # any damage to the file, whatever torch raises for it
            raise RunDirError(f"{self.path}: cannot resume from this checkpoint ({type(err).__name__}); "
                              "delete it to restart that training, or use --overwrite") from None

    def save(self, state: dict) -> None:
        import torch

        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


def load_model(path: str | Path, device: str = "cpu", tta: bool = False) -> BaseEstimator:
    """The model of a run directory, or of one job's folder: a single model, or the ensemble of a run's jobs.

    Everything is checked before use; a fault raises :class:`RunDirError` naming the file.
    """
    from .methods import EnsembleModel, load_estimator

    run_dir = RunDir(path)
    if not run_dir.path.is_dir():
        raise RunDirError(f"{run_dir.path}: not found, or not a directory")
    folders = [run_dir.path]
    if (run_dir.path / MANIFEST_FILE).is_file():
        what = run_dir.read_manifest()
        if what["kind"] == "compare":
            raise RunDirError(f"{run_dir.path}: a comparison keeps no models; train one with 'run --model NAME'")
        if what["kind"] == "tune":
            raise RunDirError(f"{run_dir.path}: a search keeps no models; train its best settings with the command "
                              f"in {run_dir.path / BEST_COMMAND}")
        if what["kind"] == "ensemble":
            folders = [run_dir.job_dir(name) for name in what["jobs"]]
        unfinished = [f.name for f in folders if not (f / JOB_FILE).is_file()]
        if unfinished:
            raise RunDirError(f"{run_dir.path}: unfinished ({len(folders) - len(unfinished)} of {len(folders)} jobs "
                              "done); run the same command again to finish it")
    models = []
    for folder in folders:
        method, cfg = run_dir.read_model_config(folder)
        model_file = folder / _model_file(method)
        if not model_file.is_file():
            raise RunDirError(f"{model_file}: not found; is {run_dir.path} a directory made by 'run' or 'train'?")
        try:
            models.append(load_estimator(method, cfg, model_file, device=device, tta=tta))
        except ValueError as err:
            raise RunDirError(str(err)) from None
    return models[0] if len(models) == 1 else EnsembleModel(models)


def _model_file(method: str) -> str:
    return WEIGHTS_FILE if check_method(method).network else SKOPS_FILE


def _settings(cfg: TrainConfig) -> dict:
    """The settings that decide a result (the device does not: a run may resume on other hardware)."""
    values = cfg.to_dict()
    del values["device"]
    return values


def _frame(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between two manifests, as 'key old -> new' (nested settings by their own names)."""
    changed = []
    for key in sorted((set(old) | set(new)) - {"version"}):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            changed.append(f"{key} {a!r} -> {b!r}" if key not in ("data", "test_data") else f"other {key}")
    return changed

