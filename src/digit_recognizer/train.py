"""The training loop: one network, one optimiser, augmentation on the training device, a row of history
per epoch. What to train and how comes from a method name and its :class:`~digit_recognizer.config.TrainConfig`.

Read top to bottom: :func:`build` makes what training changes (network, optimiser, schedule, weight average,
random generator), :func:`train_epoch` runs one pass over the shuffled data, :func:`fit` loops over the epochs,
checks each, records its history row and checkpoint, and :func:`finish` turns the trained state into the network
to keep. A new optimiser is a case of :func:`make_optimizer`; a new initialisation belongs in :func:`build`.

A network can also learn from soft targets instead of labels (knowledge distillation: a student trained on its
teachers' probabilities, :class:`SoftTargets`); everything else, augmentation, schedules and checkpoints, is
the same for it.

The loop can be resumed: given a :class:`Checkpoint`, it saves everything that decides the next epoch (weights,
optimiser, schedule, random states, history) after each epoch, and a later call with the same settings
continues from the last finished epoch to the same result.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm.auto import tqdm

from .augment import random_affine
from .config import HISTORY_COLUMNS, TrainConfig
from .console import format_duration, show_bars
from .data import Digits
from .errors import InputError, TrainingDiverged, first_line
from .evaluate import log_loss, network_proba
from .hardware import autocast_dtype
from .models import build_network, to_input

CHANCE = 0.2  # a final validation accuracy at or below this is reported as a failed training
CHECK_EVERY = 20  # batches between looks at the running loss (a look syncs the device)


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


@dataclass(frozen=True)
class SoftTargets:
    """What a student learns from instead of labels (Hinton et al. 2015): per training image a row of 10
    probabilities (its teachers', already softened by :func:`soften`), and the temperature its logits are divided
    by in the loss. Images without a label (a test set) can be trained on this way."""

    proba: np.ndarray  # (n, 10) float32, one row per training image, each summing to 1
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        if self.proba.ndim != 2 or self.proba.shape[1] != 10 or not np.isfinite(self.proba).all():
            raise ValueError(f"soft targets must be finite rows of 10 probabilities, got shape {self.proba.shape}")


TEMPERATURES = (0.1, 100.0)  # Hinton et al. used 1 to 20; far outside, the scaled loss overflows or vanishes


def check_temperature(temperature: float) -> None:
    """Refuse (ValueError) a temperature outside :data:`TEMPERATURES`, or that is not a number."""
    low, high = TEMPERATURES
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
            or not low <= temperature <= high:
        raise ValueError(f"temperature must be a number from {low:g} to {high:g} (above 0; 1 to 20 are usual), "
                         f"got {temperature!r}")


def soften(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities raised to the power 1/T and renormalised (float32): T > 1 lifts the small probabilities, the
    teachers' knowledge of which digits look alike; T = 1 leaves them as they are. Computed as a softmax of
    log(p) / T, so that a large 1/T neither underflows nor divides by zero."""
    check_temperature(temperature)
    with np.errstate(divide="ignore"):
        logs = np.log(np.asarray(proba, dtype=np.float64)) / temperature
    logs -= logs.max(1, keepdims=True)
    powered = np.exp(logs)
    return (powered / powered.sum(1, keepdims=True)).astype(np.float32)


def batch_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
               temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of a batch: against labels (int64, ``(n,)``) with label smoothing, or against soft targets
    (``(n, 10)`` probabilities) with the logits divided by ``temperature`` and the loss multiplied by its square,
    which keeps the gradients' size the same whatever the temperature (Hinton et al. 2015). Soft targets take no
    label smoothing: they are soft already."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return F.cross_entropy(logits.float() / temperature, targets) * temperature ** 2


# --- what training changes ---------------------------------------------------------------------------------------

def make_optimizer(cfg: TrainConfig, network: nn.Module) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.optimizer`` (one of :data:`~digit_recognizer.config.OPTIMIZER_NAMES`); the
    BatchNorm shifts in a group of their own at ``cfg.bn_bias_lr`` times the learning rate; with ``cfg.muon_lr``
    the convolution filters after the first are Muon's (:class:`SGDMuon`)."""
    lr, wd = cfg.lr, cfg.weight_decay
    filters = [conv.weight for conv in _convolutions(network)[1:] if conv.weight.requires_grad] if cfg.muon_lr else []
    params: list = [p for p in network.parameters() if p.requires_grad and all(p is not f for f in filters)]
    if cfg.bn_bias_lr != 1:
        shifts = [m.bias for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  and m.bias is not None]
        ids = {id(p) for p in shifts}
        params = [{"params": [p for p in params if id(p) not in ids]},
                  {"params": shifts, "lr": lr * cfg.bn_bias_lr}]
    match cfg.optimizer:
        case "rmsprop":  # Keras's RMSprop decays the squared-gradient average with rho=0.9; torch's default is 0.99
            return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-8, weight_decay=wd)
        case "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        case "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        case "sgd" if filters:
            return SGDMuon(params, filters, lr=lr, muon_lr=cfg.muon_lr, weight_decay=wd)
        case "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}'")  # TrainConfig.validate refuses it first


class SGDMuon(torch.optim.SGD):
    """SGD with Nesterov momentum for most weights and torch's Muon for convolution filters, one optimiser to the
    schedule and the checkpoint. Muon takes matrices only: each filter bank ``(out, in, k, k)`` is optimised as
    the matrix view ``(out, in*k*k)`` of its memory, so Muon's in-place update is the filters'. Muon's learning
    rate follows SGD's schedule at the fixed ratio ``muon_lr / lr``; no weight decay on the filters (BatchNorm
    follows each, so their scale does not matter)."""

    def __init__(self, params: list, filters: list[torch.Tensor], lr: float, muon_lr: float,
                 weight_decay: float) -> None:
        super().__init__(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
        self.filters = filters
        self.ratio = muon_lr / lr
        self.muon = torch.optim.Muon([_as_matrix(f, view=True) for f in filters], lr=muon_lr, weight_decay=0.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        group = self.muon.param_groups[0]
        group["lr"] = self.param_groups[0]["lr"] * self.ratio
        for bank, matrix in zip(self.filters, group["params"], strict=True):
            matrix.grad = None if bank.grad is None else _as_matrix(bank.grad)
        self.muon.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for bank in self.filters:
            bank.grad = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.muon.load_state_dict(state_dict.pop("muon"))
        super().load_state_dict(state_dict)


def _as_matrix(bank: torch.Tensor, view: bool = False) -> torch.Tensor:
    """A filter bank as the matrix ``(out, in*k*k)``; in channels-last memory its columns are in (k, k, in) order,
    which orthogonalisation does not mind (it commutes with permuting columns). ``view``: share the bank's memory
    (raises if it cannot)."""
    bank = bank.detach()
    if not bank.is_contiguous() and bank.is_contiguous(memory_format=torch.channels_last):
        bank = bank.permute(0, 2, 3, 1)
    return bank.view(len(bank), -1) if view else bank.reshape(len(bank), -1)


def _convolutions(network: nn.Module) -> list[nn.Conv2d]:
    return [m for m in network.modules() if isinstance(m, nn.Conv2d)]


def make_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> object:
    """``onecycle``: warm up to ``lr`` over the first quarter of the steps, then anneal (stepped every batch);
    ``plateau``: multiply by ``lr_factor`` when validation accuracy stalls (stepped every epoch)."""
    if cfg.schedule in ("onecycle", "triangle"):
        # At least 5 steps: with fewer, the warm-up phase is empty and the scheduler divides by zero.
        peaks = [group["lr"] for group in optimizer.param_groups]  # each group's own (BatchNorm shifts: more)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=max(cfg.epochs * steps_per_epoch, 5), pct_start=0.25,
            anneal_strategy="linear" if cfg.schedule == "triangle" else "cos")
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr)


@dataclass
class Training:
    """Everything one training changes as it goes, and saves in its checkpoint."""

    network: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    averaged: AveragedModel | None  # an exponential moving average of the weights (cfg.ema), or None
    generator: torch.Generator      # shuffling and augmentation, on the training device
    history: list[dict]
    scaler: torch.amp.GradScaler | None = None  # float16 training (GPUs without bfloat16): the loss scale

    def state(self, device: torch.device) -> dict:
        state = {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                 "torch_rng": torch.get_rng_state(), "history": self.history}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        if self.averaged is not None:
            state["averaged"] = self.averaged.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state


def training_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """What a training autocasts to (None: float32): its precision's dtype on this device
    (:func:`~digit_recognizer.hardware.autocast_dtype`), but float32 where that is float16 (a GPU without bfloat16,
    such as a P100 or T4) and Muon trains the filters: the loss scaler unscales SGD's gradients only, and Muon's
    momentum would mix scaled and unscaled ones. The fast network is small enough for float32 there."""
    dtype = autocast_dtype(cfg.precision, device)
    return None if dtype == torch.float16 and cfg.muon_lr else dtype


def build(method: str, cfg: TrainConfig, device: torch.device, steps_per_epoch: int,
          pixels: torch.Tensor | None = None) -> Training:
    """A fresh training of the network of ``method``, seeded by ``cfg.seed``, initialised and its BatchNorm
    layers set as ``cfg`` says (``pixels``: the training images, which whitening needs)."""
    torch.manual_seed(cfg.seed)
    network = build_network(method, cfg)
    prepare(network, cfg, pixels)
    network = network.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, network)
    averaged = AveragedModel(network, avg_fn=_ema_with_warmup(cfg.ema)) if cfg.ema else None
    # float16's range needs the loss scaled
    scaler = torch.amp.GradScaler(device.type) if training_dtype(cfg, device) == torch.float16 else None
    return Training(network, optimizer, make_schedule(cfg, optimizer, steps_per_epoch), averaged,
                    torch.Generator(device=device).manual_seed(cfg.seed), [], scaler)


def prepare(network: nn.Module, cfg: TrainConfig, pixels: torch.Tensor | None = None) -> None:
    """Apply the initialisation and BatchNorm settings of ``cfg`` to a freshly built network (``pixels``: the
    training images, uint8 ``(n, 784)``, which whitening needs)."""
    convs = _convolutions(network)
    if cfg.whiten:
        if pixels is None:
            raise ValueError("whiten needs the training images")
        first = convs[0]
        with torch.no_grad():
            first.weight.copy_(whitening_filters(pixels, first.out_channels // 2, first.kernel_size[0]))
        first.weight.requires_grad_(False)
    if cfg.init == "dirac":
        # Every convolution with as many channels out as in (the second of each pair) starts as the identity, so
        # that at first each pair is one convolution deep; the others keep their random weights.
        with torch.no_grad():
            for conv in convs:
                if conv.in_channels == conv.out_channels:
                    torch.nn.init.dirac_(conv.weight)
                    if conv.bias is not None:
                        conv.bias.zero_()
    for bn in (m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.momentum = cfg.bn_momentum
        if not cfg.bn_scale and bn.weight is not None:
            bn.weight.requires_grad_(False)  # fixed at its initial 1: only the shift learns


def whitening_filters(pixels: torch.Tensor, pairs: int, size: int, limit: int = 2048,
                      eps: float = 1e-3) -> torch.Tensor:
    """``2 * pairs`` filters ``(2 * pairs, 1, size, size)`` that whiten the images' ``size`` x ``size`` patches
    (zero-padded, as the convolution sees them): the patches' ``pairs`` main directions (eigenvectors of their
    second moment, from up to ``limit`` images), each divided by the square root of its eigenvalue, then the
    same negated, so that the ReLU after them keeps both signs of every direction (as airbench does)."""
    x = to_input(pixels[:limit].cpu())
    patches = F.unfold(x, size, padding=size // 2).transpose(1, 2).reshape(-1, size * size).double()
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))  # ascending
    main = (vectors[:, -pairs:] / (values[-pairs:] + eps).sqrt()).flip(1).T.reshape(pairs, 1, size, size)
    return torch.cat([main, -main]).float()


def resume(training: Training, saved: dict, cfg: TrainConfig, device: torch.device) -> None:
    """Restore a checkpoint's state into ``training``. A checkpoint is input like any file: a missing entry,
    weights of another shape or a history that is not one of fewer epochs than asked raises."""
    history = saved["history"]
    if not isinstance(history, list) or not 1 <= len(history) < cfg.epochs:
        raise ValueError(f"its history holds {len(history) if isinstance(history, list) else 'no'} epochs, "
                         f"not 1 .. {cfg.epochs - 1}")
    for number, row in enumerate(history, start=1):
        if not isinstance(row, dict) or row.get("epoch") != number or not all(
                isinstance(row.get(key), float | int) and math.isfinite(row[key]) for key in HISTORY_COLUMNS):
            raise ValueError(f"its history row {number} is not an epoch's record")
    training.network.load_state_dict(saved["network"])
    if training.averaged is not None:
        training.averaged.load_state_dict(saved["averaged"])
    if training.scaler is not None and "scaler" in saved:
        training.scaler.load_state_dict(saved["scaler"])
    training.optimizer.load_state_dict(saved["optimizer"])
    training.scheduler.load_state_dict(saved["scheduler"])
    training.generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    training.history = history


# --- one epoch ----------------------------------------------------------------------------------------------------

def train_epoch(training: Training, cfg: TrainConfig, pixels: torch.Tensor, targets: torch.Tensor, epoch: int,
                label: str = "", bars: bool = False, temperature: float = 1.0) -> dict:
    """One pass over the training images (uint8, on the device) in a fresh random order, each batch augmented;
    ``targets`` are their labels, or their soft targets (rows of probabilities, at ``temperature``: accuracy is
    then agreement with each row's most probable digit). Returns the epoch's training loss, accuracy, images seen
    and seconds. Raises :class:`TrainingDiverged` at a non-finite loss or non-finite weights."""
    network, optimizer, scheduler = training.network, training.optimizer, training.scheduler
    device = pixels.device
    dtype = training_dtype(cfg, device)
    started = time.perf_counter()
    network.train()
    n_batches = -(-len(pixels) // cfg.batch_size)
    order = torch.randperm(len(pixels), device=device, generator=training.generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    batches = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not bars,
                   file=sys.stderr)
    for b in batches:
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        if len(idx) < 2:  # BatchNorm cannot normalise a single image
            if cfg.schedule != "plateau":
                scheduler.step()
            continue
        x, y = to_input(pixels[idx]), targets[idx]
        if cfg.augment:
            x = random_affine(x, cfg.rotation, cfg.zoom, cfg.shift, generator=training.generator, elastic=cfg.elastic)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = network(x)
            loss = batch_loss(logits, y, cfg.label_smoothing, temperature)
        optimizer.zero_grad(set_to_none=True)
        if training.scaler is None:
            loss.backward()
            optimizer.step()
        else:  # a step whose scaled gradients overflowed is skipped, and the scale lowered
            training.scaler.scale(loss).backward()
            training.scaler.step(optimizer)
            training.scaler.update()
        if cfg.schedule != "plateau":
            scheduler.step()
        if training.averaged is not None:
            training.averaged.update_parameters(network)

        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == (y if y.ndim == 1 else y.argmax(1))).sum()
        seen += len(idx)
        if b % CHECK_EVERY == 0:
            _check_finite(loss_sum.item(), epoch, b + 1, label)
            if bars:
                batches.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    _check_finite(loss_sum.item(), epoch, n_batches, label)
    if not all(torch.isfinite(p).all() for p in network.parameters()):  # the last step can blow up too
        raise TrainingDiverged(f"{label}training diverged: the weights became NaN or infinite in epoch {epoch}; "
                               "lower --lr (or check the settings)")
    seconds = time.perf_counter() - started
    return {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen, "seconds": seconds,
            "images_per_second": seen / seconds}


def _check_finite(loss_sum: float, epoch: int, batch: int, label: str) -> None:
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(f"{label}training diverged: the loss is {loss_sum} in epoch {epoch} by batch {batch}; "
                               "lower --lr (or check the settings)")


# --- the loop -----------------------------------------------------------------------------------------------------

def fit(
    method: str, cfg: TrainConfig, train: Digits, val: Digits, device: torch.device,
    progress: bool = True, label: str = "", checkpoint: Checkpoint | None = None, soft: SoftTargets | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train the network of ``method`` on ``train``, evaluating on ``val`` (labelled) after each epoch: on the
    labels of ``train``, or with ``soft`` on those soft targets, one row per image of ``train`` (whose labels, if
    any, are then not used).

    Returns the network (in eval mode, on ``device``) and one history row per epoch. With ``progress`` one
    line per epoch goes to stderr (prefixed by ``label``), with bars on a terminal. Raises
    :class:`TrainingDiverged` at the first non-finite loss.
    """
    # The whole training set lives on the device as uint8; batches are cut from it by index.
    pixels = torch.from_numpy(train.images).to(device)
    if soft is None:
        targets, temperature = torch.from_numpy(train.labels).to(device), 1.0
    else:
        if len(soft.proba) != len(pixels):
            raise ValueError(f"{len(soft.proba):,} soft targets for {len(pixels):,} training images")
        targets = torch.from_numpy(np.asarray(soft.proba, dtype=np.float32)).to(device)
        temperature = soft.temperature
    training = build(method, cfg, device, steps_per_epoch=-(-len(pixels) // cfg.batch_size), pixels=pixels)
    saved = checkpoint.load() if checkpoint else None
    if saved:
        try:
            resume(training, saved, cfg, device)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
            raise InputError(f"{checkpoint.where}: cannot resume from this checkpoint ({first_line(err)}); "
                             "delete it to restart that training, or use --overwrite") from None
        if progress:
            print(f"{label}resuming after epoch {len(training.history)}/{cfg.epochs}", file=sys.stderr)

    bars = progress and show_bars()
    first = len(training.history) + 1
    elapsed = training.history[-1]["elapsed"] if training.history else 0.0  # epochs before, in any process
    started_here = time.perf_counter()
    epochs = tqdm(range(first, cfg.epochs + 1), desc=f"{label}epochs", unit="epoch", disable=not bars,
                  file=sys.stderr)
    for epoch in epochs:
        started = time.perf_counter()
        row = {"epoch": epoch, **train_epoch(training, cfg, pixels, targets, epoch, label, bars, temperature)}
        proba = network_proba(training.network, val.images, device=device, precision=cfg.precision)
        row.update(val_loss=log_loss(proba, val.labels), val_accuracy=float(np.mean(proba.argmax(1) == val.labels)),
                   lr=training.optimizer.param_groups[0]["lr"])
        elapsed += time.perf_counter() - started
        row["elapsed"] = elapsed  # training and validation, every epoch so far
        training.history.append({key: row[key] for key in HISTORY_COLUMNS})
        if cfg.schedule == "plateau":
            training.scheduler.step(row["val_accuracy"])
        if bars:
            epochs.set_postfix(val_acc=f"{row['val_accuracy']:.4f}")
        if progress:
            left = (cfg.epochs - epoch) * (time.perf_counter() - started_here) / (epoch - first + 1)
            tqdm.write(label + format_epoch(row, cfg.epochs, left), file=sys.stderr)
        if checkpoint and epoch < cfg.epochs:
            checkpoint.save(training.state(device))
    return finish(training, pixels), training.history


def finish(training: Training, pixels: torch.Tensor) -> nn.Module:
    """The network to keep, in eval mode: the weight average when there is one, its BatchNorm statistics
    recomputed for its own weights."""
    network = training.network
    if training.averaged is not None:
        network = training.averaged.module
        recalibrate_batchnorm(network, pixels)
    return network.eval()


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


# --- progress -----------------------------------------------------------------------------------------------------

def format_epoch(row: dict, epochs: int, left: float | None = None) -> str:
    """One epoch's progress line; ``left``: the estimated seconds to the last epoch."""
    eta = f"  ETA {format_duration(left)}" if left else ""
    return (
        f"epoch {row['epoch']:>3}/{epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.1e}  "
        f"{row['seconds']:.1f}s  {row['images_per_second']:.0f} img/s{eta}"
    )
