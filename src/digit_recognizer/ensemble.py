"""Ensembles of networks, honest out-of-fold estimates, and test-time augmentation.

An ensemble run directory holds ``members/member<m>[-fold<k>]/`` (each a normal network run: weights, config,
history, and its held-out probabilities), ``ensemble.json`` and ``metrics.json``. Members differ by their seed
(initial weights, data order, augmentation draws). With ``folds=K`` every member is trained K times, once per
fold, and is scored on the fold it did not see, so every training row gets out-of-fold probabilities; the data a
model is scored on is never used to train it, nor to steer its learning-rate schedule.

A member whose ``metrics.json`` exists has finished and is not trained again when an interrupted run restarts.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import Digits, split, split_indices
from .evaluate import TTA_SHIFTS, accuracy, log_loss, predict_proba
from .files import atomic_path, write_json
from .models import load_network, save_network
from .train import fit, resolve_device

MEMBERS_DIR = "members"
ENSEMBLE_FILE = "ensemble.json"


def member_name(member: int, fold: int | None) -> str:
    return f"member{member}" + (f"-fold{fold}" if fold is not None else "")


def train_ensemble(
    cfg: TrainConfig, digits: Digits, out: str | Path, members: int = 3, folds: int = 1, progress: bool = True
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Train ``members`` networks (on each of ``folds`` folds) and score them and their average on held-out rows.

    Returns the metrics (also in ``out/metrics.json``: each member's held-out accuracy, the ensemble's, with and
    without test-time augmentation, and the time each took), the ensemble's probabilities with test-time
    augmentation ``(n, 10)``, and the mask of the rows that were held out (all of them with K folds).
    """
    out = Path(out)
    cfg.validate()
    if members < 1 or folds < 1:
        raise ValueError("members and folds must be at least 1")
    pairs = split_indices(digits.labels, folds, cfg.val_fraction, cfg.seed)
    n = len(digits)
    held_out = np.zeros(n, dtype=bool)
    for _, va in pairs:
        held_out[va] = True
    proba = np.zeros((members, n, 10), dtype=np.float32)
    proba_tta = np.zeros((members, n, 10), dtype=np.float32)
    seconds = np.zeros(members)
    device = resolve_device(cfg.device)

    jobs = [(m, k) for m in range(members) for k in range(len(pairs))]
    bar = tqdm(jobs, desc="ensemble", unit="model", disable=not progress)
    for m, k in bar:
        name = member_name(m, k if folds > 1 else None)
        bar.set_description(f"ensemble: {name}")
        tr, va = pairs[k]
        member_dir = out / MEMBERS_DIR / name
        if not (member_dir / "metrics.json").is_file():
            _train_member(cfg, m, Digits(digits.images[tr], digits.labels[tr]),
                          Digits(digits.images[va], digits.labels[va]), member_dir, device, progress)
        saved = np.load(member_dir / "heldout_proba.npz")
        proba[m, va], proba_tta[m, va] = saved["proba"], saved["proba_tta"]
        seconds[m] += json.loads((member_dir / "metrics.json").read_text())["train_seconds"]

    y = digits.labels[held_out]
    table = [{"model": f"member {m}", "accuracy": accuracy(proba[m, held_out], y),
              "accuracy_tta": accuracy(proba_tta[m, held_out], y), "train_seconds": round(seconds[m], 1)}
             for m in range(members)]
    mean, mean_tta = proba.mean(0)[held_out], proba_tta.mean(0)[held_out]
    table.append({"model": f"ensemble of {members}", "accuracy": accuracy(mean, y),
                  "accuracy_tta": accuracy(mean_tta, y), "train_seconds": round(seconds.sum(), 1)})
    metrics = {
        "estimate": "out-of-fold" if folds > 1 else "validation split",
        "rows_scored": int(held_out.sum()), "members": members, "folds": folds,
        "single_model_accuracy": float(np.mean([row["accuracy"] for row in table[:-1]])),
        "ensemble_accuracy": table[-1]["accuracy"], "ensemble_accuracy_tta": table[-1]["accuracy_tta"],
        "ensemble_loss": log_loss(mean, y), "train_seconds": round(seconds.sum(), 1), "device": str(device),
        "table": table,
    }
    write_json({"members": members, "folds": folds, "tta_shifts": TTA_SHIFTS, "train": cfg.to_dict()},
               out / ENSEMBLE_FILE)
    write_json(metrics, out / "metrics.json")
    return metrics, proba_tta.mean(0), held_out


def _train_member(cfg: TrainConfig, member: int, train: Digits, held_out: Digits, member_dir: Path,
                  device: torch.device, progress: bool) -> None:
    member_cfg = dataclasses.replace(cfg, seed=cfg.seed + 1000 * (member + 1))
    if cfg.schedule == "plateau":
        # The plateau schedule reacts to validation accuracy: give it a split of the member's own training part.
        fit_train, monitor = split(train, cfg.val_fraction, member_cfg.seed)
    else:
        fit_train, monitor = train, held_out  # one-cycle takes no decision from it: monitoring only
    started = time.perf_counter()
    network, history = fit(member_cfg, fit_train, monitor, progress=progress)
    train_seconds = time.perf_counter() - started
    save_network(network, member_dir,
                 {"arch": cfg.arch, "arch_options": cfg.arch_options(), "train": member_cfg.to_dict()})
    with atomic_path(member_dir / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    with atomic_path(member_dir / "heldout_proba.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, proba=predict_proba(network, held_out.images, device=device),
                     proba_tta=predict_proba(network, held_out.images, device=device, tta=True))
    write_json({"train_seconds": round(train_seconds, 2), "epochs": len(history)}, member_dir / "metrics.json")


class EnsembleModel:
    """The members of an ensemble run directory, predicting by the mean of their probabilities."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", tta: bool = False) -> None:
        member_dirs = sorted(p for p in (Path(run_dir) / MEMBERS_DIR).iterdir() if (p / "metrics.json").is_file())
        if not member_dirs:
            raise FileNotFoundError(f"{run_dir}: no finished ensemble members")
        self.device = resolve_device(device)
        self.networks = [load_network(d)[0].to(self.device) for d in member_dirs]
        self.tta = tta

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return np.mean([predict_proba(n, images, self.device, tta=self.tta) for n in self.networks], axis=0)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(1)


def is_ensemble(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ENSEMBLE_FILE).is_file()
