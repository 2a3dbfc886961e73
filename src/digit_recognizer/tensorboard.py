"""TensorBoard event files (``--tensorboard``): each job's per-epoch scalars, and the run's figures and settings.

Written with torch's ``SummaryWriter`` (the ``tensorboard`` extra), imported only when called, by the command's
own process from each job's record as it arrives (on a cluster too), never from inside a training loop: under
``OUT/tensorboard/<job>/`` for a job of an ensemble, ``OUT/tensorboard/run/`` for the run and a single run's job.
Every event file is recorded in the run directory's list of its files.
"""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

from .jobs import Job
from .rundir import CONFUSION_FILE, ERRORS_FILE, RunDir

TENSORBOARD_HINT = ("--tensorboard needs the tensorboard package: pip install 'digit-recognizer[tensorboard]' "
                    "(or pip install -e '.[tensorboard]' in a checkout)")
# history.csv column -> TensorBoard scalar tag (step: the epoch)
SCALAR_TAGS = {"loss": "loss/train", "val_loss": "loss/validation", "accuracy": "accuracy/train",
               "val_accuracy": "accuracy/validation", "lr": "learning_rate", "images_per_second": "images_per_second"}
# Event files of TensorBoard, by who writes them: a job's (per-epoch scalars), or the run's (figures, settings
# with the final metrics). Each writer replaces only its own files, so either can be written again.
JOB_EVENTS, RUN_EVENTS = ".job", ".run"
FINAL_METRICS = ("val_accuracy", "val_loss", "single_model_accuracy", "ensemble_accuracy", "ensemble_accuracy_tta",
                 "ensemble_loss")


def tensorboard_missing() -> str | None:
    """Why ``--tensorboard`` cannot work here (the package is not installed), or None."""
    return None if importlib.util.find_spec("tensorboard") else TENSORBOARD_HINT


def write_events(folder: Path, suffix: str, history: list[dict] | None = None, hparams: dict | None = None,
                 metrics: dict | None = None, images: dict[str, bytes] | None = None) -> None:
    """Write one TensorBoard event file into ``folder``, replacing the event files written before with the same
    ``suffix``: per-epoch scalars from ``history`` (:data:`SCALAR_TAGS`), PNG ``images`` by tag, and ``hparams``
    with ``metrics`` (tag -> final value) for TensorBoard's hyper-parameter view."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    for old in Path(folder).glob(f"events.out.tfevents.*{suffix}"):
        old.unlink()
    with SummaryWriter(str(folder), filename_suffix=suffix) as writer:
        for row in history or []:
            for key, tag in SCALAR_TAGS.items():
                if key in row and math.isfinite(row[key]):
                    writer.add_scalar(tag, float(row[key]), int(row["epoch"]))
        for tag, png in (images or {}).items():
            writer.add_image(tag, _pixels(png), 0, dataformats="HWC")
        if hparams:
            metrics = metrics or {}
            for summary in hparams_summary({key: _hparam(value) for key, value in hparams.items()}, metrics):
                writer.file_writer.add_summary(summary)
            for tag, value in metrics.items():
                writer.add_scalar(tag, float(value), 0)


def _pixels(png: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def _hparam(value: object) -> bool | int | float | str:
    """TensorBoard takes numbers, booleans and strings as hyper-parameters; lists become '32,64,128'."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def has_job_events(run_dir: RunDir, name: str) -> bool:
    return any(run_dir.events_dir(name).glob(f"events.out.tfevents.*{JOB_EVENTS}"))


def write_job_events(run_dir: RunDir, job: Job, history: list[dict] | None, accuracy: float) -> None:
    """A finished job's per-epoch scalars; a job of an ensemble also gets its own settings (its seed) and its
    held-out accuracy as hyper-parameters, so that TensorBoard shows each member as a run of its own."""
    hparams = {"job": job.name, "method": job.method, **job.config.settings()} if job.name else None
    metrics = {"final/held_out_accuracy": accuracy} if job.name else None
    _write(run_dir, job.name, JOB_EVENTS, history=history, hparams=hparams, metrics=metrics)


def write_run_events(run_dir: RunDir, metrics: dict) -> None:
    """The run's confusion matrix and error gallery as images, and its settings (``run.json``) with its final
    metrics as hyper-parameters, in ``tensorboard/run/``."""
    what = run_dir.read_manifest()
    hparams = {key: what[key] for key in ("kind", "method", "members", "folds") if key in what}
    hparams.update(what.get("train", {}))
    images = {tag: figure for tag, name in (("confusion_matrix", CONFUSION_FILE), ("errors", ERRORS_FILE))
              if (figure := run_dir.read_figure(name)) is not None}
    final = {f"final/{key}": metrics[key] for key in FINAL_METRICS if key in metrics}
    _write(run_dir, "", RUN_EVENTS, hparams=hparams, metrics=final, images=images)


def _write(run_dir: RunDir, name: str, suffix: str, **what: object) -> None:
    folder = run_dir.events_dir(name)
    write_events(folder, suffix, **what)
    run_dir.record(*folder.glob(f"events.out.tfevents.*{suffix}"), written=True)
