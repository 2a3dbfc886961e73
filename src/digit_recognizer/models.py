"""Network architectures, built by method name from a :class:`~digit_recognizer.config.TrainConfig`, and their
weights files.

Networks take a float batch ``(n, 1, 28, 28)`` scaled to [0, 1] and return ``(n, 10)`` logits. Weights are
saved with safetensors, which cannot execute code on load; the settings that rebuild the network travel beside
them in the run directory (:mod:`digit_recognizer.rundir`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import NETWORK_NAMES, TrainConfig, check_method, method_config
from .data import N_CLASSES, SIDE
from .errors import first_line
from .files import atomic_path


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
            nn.Linear(f3 * (SIDE // 4) ** 2, dense), nn.ReLU(inplace=True), nn.BatchNorm1d(dense), nn.Dropout(d4),
            nn.Linear(dense, N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def conv_pool_bn(c_in: int, c_out: int) -> list[nn.Module]:
    """Convolution, then 2x2 max-pooling, then BatchNorm and ReLU: the element-wise work on a quarter of the
    pixels (ReLU commutes with the max; BatchNorm's statistics are those of the pooled maps)."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class FastCNN(nn.Module):
    """A small BatchNorm CNN for speed: three stages of two 3x3 conv-BN-ReLU with max-pooling between them,
    then a seed-like dense head. With 16-32-64 filters it costs about 7.7 M multiply-adds per image, a sixth
    of the seed network. ``pool_first`` pools each pooled stage's second convolution before its BatchNorm and
    ReLU. ``crop`` is the side of the central square of the 28x28 input it looks at (a multiple of 4: two
    poolings); the rest is cut away before the first convolution."""

    def __init__(self, filters: Sequence[int] = (16, 32, 64), dense: int = 128, dropout: float = 0.25,
                 pool_first: bool = False, crop: int = SIDE) -> None:
        super().__init__()
        f1, f2, f3 = filters
        self.margin = (SIDE - crop) // 2

        def pooled(c: int) -> list[nn.Module]:  # the second convolution of a stage that ends in pooling
            return conv_pool_bn(c, c) if pool_first else [*conv_bn(c, c), nn.MaxPool2d(2)]

        self.features = nn.Sequential(
            *conv_bn(1, f1), *pooled(f1),     # 28 -> 14
            *conv_bn(f1, f2), *pooled(f2),    # 14 -> 7
            *conv_bn(f2, f3), *conv_bn(f3, f3),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(f3 * (crop // 4) ** 2, dense, bias=False), nn.BatchNorm1d(dense),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(dense, N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.margin:
            x = x[:, :, self.margin:SIDE - self.margin, self.margin:SIDE - self.margin]
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
        layers.append(nn.Linear(width, N_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_network(method: str, cfg: TrainConfig | None = None) -> nn.Module:
    """The network of a method (its record's ``builder``, a class of this module) shaped by the settings its
    record names (``shape``) from ``cfg`` (default: the method's recipe)."""
    if method not in NETWORK_NAMES:
        raise ValueError(f"unknown network '{method}'; known: {', '.join(NETWORK_NAMES)}")
    record = check_method(method)
    network_class = globals()[record.builder]
    cfg = cfg or method_config(method)
    return network_class(**{name: getattr(cfg, name) for name in record.shape})


def save_weights(network: nn.Module, path: str | Path) -> None:
    """Write the network's weights as safetensors, atomically."""
    # safetensors refuses tensors that share storage or are not contiguous, so copy to plain tensors.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(network: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights into ``network`` (every tensor present, of the right shape); returns it in eval mode.

    Raises ValueError naming the file and the fault: not safetensors, truncated, for another network, or with
    weights that are not finite numbers (training stops when it diverges, so no saved network has any).
    """
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({first_line(err)})") from None
    damaged = next((name for name, tensor in state.items()
                    if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)
    if damaged is not None:
        raise ValueError(f"{path}: weight '{damaged}' holds values that are not finite numbers (a damaged file)")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the network described by config.json "
                         f"({first_line(err)})") from None
    return network.eval()
