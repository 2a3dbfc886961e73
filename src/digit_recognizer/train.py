"""The training loop: one network, one optimiser, augmentation on the training device, a row of history
per epoch. What to train and how comes from a method name and its :class:`~digit_recognizer.config.TrainConfig`.

The loop can be resumed: given a :class:`Checkpoint`, it saves everything that decides the next epoch (weights,
optimiser, schedule, random states, history) after each epoch, and a later call with the same settings
continues from the last finished epoch to the same result.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm.auto import tqdm

from .augment import random_affine
from .config import TrainConfig
from .data import Digits
from .errors import InputError, TrainingDiverged, first_line
from .evaluate import log_loss, predict_proba
from .models import build_network, to_input

OPTIMIZERS = {
    # Keras's RMSprop decays the squared-gradient average with rho=0.9; torch's default alpha is 0.99.
    "rmsprop": lambda params, lr, wd: torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-8, weight_decay=wd),
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
}
CHANCE = 0.2  # a final validation accuracy at or below this is reported as a failed training
# One row of history per epoch: these numbers, and "epoch".
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second", "elapsed")


class Checkpoint(Protocol):
    """Where the loop keeps its state between epochs (the run directory provides one)."""

    @property
    def where(self) -> str:
        """The file, for messages."""
        ...

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; refuses a CUDA device that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' was asked for but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device '{name}' was asked for but there are {torch.cuda.device_count()} CUDA devices")
    return device


def show_bars() -> bool:
    """Progress bars only on a terminal: redirected to a file they would fill it with control codes."""
    return sys.stderr.isatty()


def fit(
    method: str, cfg: TrainConfig, train: Digits, val: Digits, device: torch.device,
    progress: bool = True, label: str = "", checkpoint: Checkpoint | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train the network of ``method`` on ``train``, evaluating on ``val`` after each epoch.

    Returns the network (in eval mode, on ``device``) and one history row per epoch. With ``progress`` one
    line per epoch goes to stderr (prefixed by ``label``), with bars on a terminal. Raises
    :class:`TrainingDiverged` at the first non-finite loss.
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    network = build_network(method, cfg).to(device, memory_format=torch.channels_last)
    optimizer = OPTIMIZERS[cfg.optimizer](network.parameters(), cfg.lr, cfg.weight_decay)
    # The whole training set lives on the device as uint8; batches are cut from it by index.
    x_all = torch.from_numpy(train.images).to(device)
    y_all = torch.from_numpy(train.labels).to(device)
    n = len(x_all)
    n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
    if cfg.schedule == "onecycle":
        # At least 5 steps: with fewer, the warm-up phase is empty and the scheduler divides by zero.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=max(cfg.epochs * n_batches, 5), pct_start=0.25
        )
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
        )
    use_amp = device.type == "cuda"
    # An exponential moving average of the weights (BatchNorm statistics are recomputed for it at the end).
    averaged = AveragedModel(network, avg_fn=_ema_with_warmup(cfg.ema)) if cfg.ema else None

    history: list[dict] = []
    saved = checkpoint.load() if checkpoint else None
    if saved:
        try:
            history = _resume(saved, cfg, network, averaged, optimizer, scheduler, generator, device)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
            raise InputError(f"{checkpoint.where}: cannot resume from this checkpoint ({first_line(err)}); "
                             "delete it to restart that training, or use --overwrite") from None
        if progress:
            print(f"{label}resuming after epoch {len(history)}/{cfg.epochs}", file=sys.stderr)

    bars = progress and show_bars()
    epochs = tqdm(range(len(history) + 1, cfg.epochs + 1), desc=f"{label}epochs", unit="epoch", disable=not bars,
                  file=sys.stderr)
    elapsed = history[-1]["elapsed"] if history else 0.0  # wall seconds of the epochs before, in any process
    first, started_here = len(history) + 1, time.perf_counter()
    for epoch in epochs:
        network.train()
        started = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        batches = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not bars,
                       file=sys.stderr)
        for b in batches:
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot normalise a single image
                if cfg.schedule == "onecycle":
                    scheduler.step()
                continue
            x, y = to_input(x_all[idx]), y_all[idx]
            if cfg.augment:
                x = random_affine(x, cfg.rotation, cfg.zoom, cfg.shift, generator=generator)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = network(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cfg.schedule == "onecycle":
                scheduler.step()
            if averaged is not None:
                averaged.update_parameters(network)

            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
            if b % 20 == 0:  # reading the values syncs the device, so not every batch
                _check_finite(loss_sum.item(), epoch, b + 1, label)
                if bars:
                    batches.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")

        seconds = time.perf_counter() - started
        _check_finite(loss_sum.item(), epoch, n_batches, label)
        if not all(torch.isfinite(p).all() for p in network.parameters()):  # the last step can blow up too
            raise TrainingDiverged(f"{label}training diverged: the weights became NaN or infinite in epoch {epoch}; "
                                   "lower --lr (or check the settings)")
        proba = predict_proba(network, val.images, device=device)
        row = {
            "epoch": epoch,
            "loss": loss_sum.item() / seen,
            "accuracy": correct.item() / seen,
            "val_loss": log_loss(proba, val.labels),
            "val_accuracy": float(np.mean(proba.argmax(1) == val.labels)),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_second": seen / seconds,
            "elapsed": elapsed + time.perf_counter() - started,  # training and validation, every epoch so far
        }
        elapsed = row["elapsed"]
        history.append(row)
        if cfg.schedule == "plateau":
            scheduler.step(row["val_accuracy"])
        if bars:
            epochs.set_postfix(val_acc=f"{row['val_accuracy']:.4f}")
        if progress:
            left = (cfg.epochs - epoch) * (time.perf_counter() - started_here) / (epoch - first + 1)
            tqdm.write(label + format_epoch(row, cfg.epochs, left), file=sys.stderr)
        if checkpoint and epoch < cfg.epochs:
            state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                     "torch_rng": torch.get_rng_state(), "history": history}
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            if averaged is not None:
                state["averaged"] = averaged.state_dict()
            checkpoint.save(state)
    if averaged is not None:
        network = averaged.module
        recalibrate_batchnorm(network, x_all)
    network.eval()
    return network, history


def _resume(saved: dict, cfg: TrainConfig, network: nn.Module, averaged: AveragedModel | None,
            optimizer: torch.optim.Optimizer, scheduler: object, generator: torch.Generator,
            device: torch.device) -> list[dict]:
    """Restore the training state of a checkpoint; returns its history. A checkpoint is input like any file: a
    missing entry, weights of another shape or a history that is not one of fewer epochs than asked raises."""
    history = saved["history"]
    if not isinstance(history, list) or not 1 <= len(history) < cfg.epochs:
        raise ValueError(f"its history holds {len(history) if isinstance(history, list) else 'no'} epochs, "
                         f"not 1 .. {cfg.epochs - 1}")
    for number, row in enumerate(history, start=1):
        if not isinstance(row, dict) or row.get("epoch") != number or not all(
                isinstance(row.get(key), float | int) and math.isfinite(row[key]) for key in HISTORY_KEYS):
            raise ValueError(f"its history row {number} is not an epoch's record")
    network.load_state_dict(saved["network"])
    if averaged is not None:
        averaged.load_state_dict(saved["averaged"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    return history


def _ema_with_warmup(decay: float):
    """The average's update: decay ``min(decay, (1 + n) / (10 + n))`` after n updates, so that the first
    weights, still random, weigh little (An et al. 2020)."""
    def update(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        return averaged * d + current * (1 - d)
    return update


@torch.no_grad()
def recalibrate_batchnorm(network: nn.Module, pixels: torch.Tensor, limit: int = 8192, batch_size: int = 256) -> None:
    """Recompute every BatchNorm layer's statistics for the network's present weights, from up to ``limit``
    training images (un-augmented): averaged weights need statistics of their own."""
    batches = [to_input(pixels[i:i + batch_size]).contiguous(memory_format=torch.channels_last)
               for i in range(0, min(len(pixels), limit), batch_size)]
    update_bn(batches, network)


def _check_finite(loss_sum: float, epoch: int, batch: int, label: str) -> None:
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(f"{label}training diverged: the loss is {loss_sum} in epoch {epoch} by batch {batch}; "
                               "lower --lr (or check the settings)")


def format_epoch(row: dict, epochs: int, left: float | None = None) -> str:
    """One epoch's progress line; ``left``: the estimated seconds to the last epoch."""
    eta = f"  ETA {format_duration(left)}" if left else ""
    return (
        f"epoch {row['epoch']:>3}/{epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.1e}  "
        f"{row['seconds']:.1f}s  {row['images_per_second']:.0f} img/s{eta}"
    )


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
