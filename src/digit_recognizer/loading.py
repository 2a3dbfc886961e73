"""The model of a run directory (or of one job's folder): which files hold it, and loading them.

Everything is checked before use: ``run.json``, each job's ``config.json`` (like any settings file) and its model
file (loaded by :func:`~digit_recognizer.methods.load_estimator`, which executes nothing); a fault raises
:class:`~digit_recognizer.errors.RunDirError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import RunDirError
from .rundir import (
    BEST_COMMAND,
    CONFIG_FILE,
    JOB_FILE,
    MANIFEST_FILE,
    SKOPS_FILE,
    WEIGHTS_FILE,
    RunDir,
    exists,
    model_file,
)

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator


def model_folders(path: str | Path) -> list[Path]:
    """The folders holding the model(s) of a run directory, or of one job's folder: one for a single model, one
    per job for an ensemble. Raises RunDirError for a directory that holds no model."""
    run_dir = RunDir(path)
    if not run_dir.path.is_dir():
        raise RunDirError(f"{run_dir.path}: not found, or not a directory")
    if not exists(run_dir.path / MANIFEST_FILE):
        return [run_dir.path]  # a job's folder
    what = run_dir.read_manifest()
    if what["kind"] == "compare":
        raise RunDirError(f"{run_dir.path}: a comparison keeps no models; train one with 'run --model NAME'")
    if what["kind"] == "tune":
        raise RunDirError(f"{run_dir.path}: a search keeps no models; train its best settings with the command "
                          f"in {run_dir.path / BEST_COMMAND}")
    folders = [run_dir.job_dir(name) for name in what["jobs"]] if what["kind"] == "ensemble" else [run_dir.path]
    unfinished = [f.name for f in folders if not exists(f / JOB_FILE)]
    if unfinished:
        raise RunDirError(f"{run_dir.path}: unfinished ({len(folders) - len(unfinished)} of {len(folders)} jobs "
                          "done); run the same command again to finish it")
    return folders


def model_files(path: str | Path) -> list[Path]:
    """Every file :func:`load_model` reads from ``path``: a command must not write its output over one of them."""
    folders = model_folders(path)
    files = [Path(path) / MANIFEST_FILE] if exists(Path(path) / MANIFEST_FILE) else []
    for folder in folders:
        files += [folder / CONFIG_FILE, folder / WEIGHTS_FILE, folder / SKOPS_FILE]
    return files


def load_model(path: str | Path, device: str = "cpu", tta: bool = False) -> BaseEstimator:
    """The model of a run directory, or of one job's folder: a single model, or the ensemble of a run's jobs.

    Everything is checked before use; a fault raises :class:`RunDirError` naming the file.
    """
    from .methods import EnsembleModel, load_estimator  # torch and scikit-learn: only when a model is loaded

    run_dir = RunDir(path)
    models = []
    for folder in model_folders(path):
        method, cfg = run_dir.read_model_config(folder)
        weights = folder / model_file(method)
        if not weights.is_file():
            raise RunDirError(f"{weights}: not found; is {run_dir.path} a directory made by 'run' or 'train'?")
        try:
            models.append(load_estimator(method, cfg, weights, device=device, tta=tta))
        except ValueError as err:
            raise RunDirError(str(err)) from None
    return models[0] if len(models) == 1 else EnsembleModel(models)
