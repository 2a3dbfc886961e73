"""Network architectures, and the one way to save and load a trained network.

Networks take a float batch ``(n, 1, 28, 28)`` scaled to [0, 1] and return ``(n, 10)`` logits.
Weights are saved with safetensors, which cannot execute code on load, and the architecture's
settings travel beside them as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .data import SIDE
from .files import atomic_path, write_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def to_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``(n, 784)`` -> the networks' input: float ``(n, 1, 28, 28)`` in [0, 1]."""
    return pixels.reshape(-1, 1, SIDE, SIDE).float().div_(255)


def conv_pair(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    """Two 'same'-padded convolutions, each followed by ReLU."""
    return [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2), nn.ReLU(inplace=True),
    ]


class SeedCNN(nn.Module):
    """The seed kernel's network, layer for layer:

    ``[[Conv2D->ReLU]x2 -> BatchNorm -> MaxPool2D -> Dropout]x2 -> [Conv2D->ReLU]x2 -> BatchNorm -> Dropout
    -> Flatten -> Dense -> BatchNorm -> Dropout -> Out(10)``
    """

    def __init__(
        self,
        filters: Sequence[int] = (32, 64, 128),
        kernels: Sequence[int] = (5, 3, 3),
        dense: int = 256,
        dropout: Sequence[float] = (0.25, 0.25, 0.25, 0.5),
    ) -> None:
        super().__init__()
        f1, f2, f3 = filters
        k1, k2, k3 = kernels
        d1, d2, d3, d4 = dropout
        self.features = nn.Sequential(
            *conv_pair(1, f1, k1), nn.BatchNorm2d(f1), nn.MaxPool2d(2), nn.Dropout(d1),   # 28 -> 14
            *conv_pair(f1, f2, k2), nn.BatchNorm2d(f2), nn.MaxPool2d(2), nn.Dropout(d2),  # 14 -> 7
            *conv_pair(f2, f3, k3), nn.BatchNorm2d(f3), nn.Dropout(d3),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(f3 * 7 * 7, dense), nn.ReLU(inplace=True), nn.BatchNorm1d(dense), nn.Dropout(d4),
            nn.Linear(dense, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FastCNN(nn.Module):
    """A small BatchNorm CNN for speed: three stages of two 3x3 conv-BN-ReLU with max-pooling between them,
    then a seed-like dense head. With 16-32-64 filters it costs about 7.7 M multiply-adds per image, a sixth
    of the seed network."""

    def __init__(self, filters: Sequence[int] = (16, 32, 64), dense: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        f1, f2, f3 = filters
        self.features = nn.Sequential(
            *conv_bn(1, f1), *conv_bn(f1, f1), nn.MaxPool2d(2),    # 28 -> 14
            *conv_bn(f1, f2), *conv_bn(f2, f2), nn.MaxPool2d(2),   # 14 -> 7
            *conv_bn(f2, f3), *conv_bn(f3, f3),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(f3 * 7 * 7, dense, bias=False), nn.BatchNorm1d(dense), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(dense, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A fully connected baseline: 784 -> hidden layers (ReLU, BatchNorm, Dropout) -> 10."""

    def __init__(self, hidden: Sequence[int] = (512, 256), dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = SIDE * SIDE
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.BatchNorm1d(size), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 10))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {"seed": SeedCNN, "fast": FastCNN, "mlp": MLP}


def build_network(arch: str, **options) -> nn.Module:
    """Instantiate a registered architecture by name, e.g. ``build_network("seed", dense=128)``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}'; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**options)


def save_network(network: nn.Module, run_dir: str | Path, config: dict) -> None:
    """Write ``model.safetensors`` and ``config.json`` (which must hold ``arch`` and its options)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage or are not contiguous, so copy to plain tensors.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json(config, run_dir / CONFIG_FILE)


def load_network(run_dir: str | Path) -> tuple[nn.Module, dict]:
    """Load a network saved by :func:`save_network`; returns it in eval mode on the CPU, with its config."""
    run_dir = Path(run_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name}; is this a run directory made by 'train' or 'run'?")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    network = build_network(config["arch"], **config.get("arch_options", {}))
    network.load_state_dict(load_file(str(run_dir / WEIGHTS_FILE)))
    return network.eval(), config
