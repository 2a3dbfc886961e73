"""The training loop: one network, one optimiser, augmentation on the training device, a row of history
per epoch. What to train and how comes from :class:`~digit_recognizer.config.TrainConfig`."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import random_affine
from .config import TrainConfig
from .data import Digits
from .evaluate import log_loss, predict_proba
from .models import build_network, to_input

OPTIMIZERS = {
    # Keras's RMSprop decays the squared-gradient average with rho=0.9; torch's default alpha is 0.99.
    "rmsprop": lambda params, lr, wd: torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-8, weight_decay=wd),
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return device


def fit(
    cfg: TrainConfig, train: Digits, val: Digits, progress: bool = True
) -> tuple[nn.Module, list[dict]]:
    """Train a network on ``train``, evaluating on ``val`` after each epoch.

    Returns the network (in eval mode, on the training device) and one history row per epoch.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    network = build_network(cfg.arch, **cfg.arch_options())
    network = network.to(device, memory_format=torch.channels_last)
    optimizer = OPTIMIZERS[cfg.optimizer](network.parameters(), cfg.lr, cfg.weight_decay)
    # The whole training set lives on the device as uint8; batches are cut from it by index.
    x_all = torch.from_numpy(train.images).to(device)
    y_all = torch.from_numpy(train.labels).to(device)
    n = len(x_all)
    n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
    if cfg.schedule == "onecycle":
        per_batch = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * n_batches, pct_start=0.25
        )
    else:
        per_epoch = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
        )
    use_amp = device.type == "cuda"

    history: list[dict] = []
    epochs = tqdm(range(1, cfg.epochs + 1), desc="epochs", unit="epoch", disable=not progress)
    for epoch in epochs:
        network.train()
        started = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        batches = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
        for b in batches:
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot normalise a single image
                if cfg.schedule == "onecycle":
                    per_batch.step()
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
                per_batch.step()

            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
            if progress and b % 20 == 0:  # reading the values syncs the device, so not every batch
                batches.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")

        seconds = time.perf_counter() - started
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
        }
        history.append(row)
        if cfg.schedule == "plateau":
            per_epoch.step(row["val_accuracy"])
        if progress:
            epochs.set_postfix(val_acc=f"{row['val_accuracy']:.4f}")
            tqdm.write(format_epoch(row, cfg.epochs))
    network.eval()
    return network, history


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.1e}  "
        f"{row['seconds']:.1f}s  {row['images_per_second']:.0f} img/s"
    )
