"""Class probabilities from a network, and the scores computed from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import N_CLASSES, SIDE
from .hardware import autocast_dtype
from .models import to_input

# Test-time augmentation: the identity plus one-pixel shifts in the four directions, for the images the network
# is unsure of: those whose most probable digit has a probability below TTA_UNSURE on the image itself. Out of fold
# on 20 networks of docs/results.md, shifting only those (1-3 % of the rows) made the same errors as shifting every
# image, within one row, in about a tenth of the extra time. (Label smoothing 0.1 caps a sure digit at ~0.91.)
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
TTA_UNSURE = 0.8


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift a ``(n, 1, 28, 28)`` batch by whole pixels (down/right for positive values), filling with 0."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p))
    return padded[:, :, p - dy:SIDE + p - dy, p - dx:SIDE + p - dx]


def network_proba(
    network: nn.Module, images: np.ndarray, device: torch.device | str = "cpu", batch_size: int | None = None,
    tta: bool = False, shifts: Sequence[tuple[int, int]] | None = None, unsure_below: float | None = TTA_UNSURE,
    precision: str = "auto",
) -> np.ndarray:
    """Softmax probabilities ``(n, 10)`` (float32) for uint8 images ``(n, 784)``.

    With ``tta``, the probabilities of each image whose top probability is below ``unsure_below`` (every image
    when None) are the mean over its copies shifted by :data:`TTA_SHIFTS` (or by ``shifts``, whole pixels
    ``(down, right)`` starting with ``(0, 0)``, when given: the benchmarks compare other sets); the others' are
    their own. The default batch is 256 images on a CPU (activations stay in cache; 1,024 is a third slower) and
    4,096 on a GPU.

    ``precision`` is the arithmetic, a :class:`~digit_recognizer.config.TrainConfig` precision: pass the one the
    network trained in. "auto" is a GPU's half precision and float32 on a CPU; "native" adds bfloat16 on a CPU that
    computes it (:func:`~digit_recognizer.hardware.autocast_dtype`), where 40 networks of the wide ensemble
    predicted 1.6-2.1x faster than in float32 (on a Xeon with AMX) and made the same out-of-fold errors.
    """
    shifts = (shifts or TTA_SHIFTS) if tta else TTA_SHIFTS[:1]
    return _predict(network, images, device, batch_size, shifts, unsure_below, precision)[1]


def network_proba_and_tta(network: nn.Module, images: np.ndarray, device: torch.device | str = "cpu",
                          precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """:func:`network_proba` without and with ``tta``, from one pass over the images (TTA's first copy is the
    image itself, so predicting both apart would predict every image twice)."""
    return _predict(network, images, device, None, TTA_SHIFTS, TTA_UNSURE, precision)


@torch.inference_mode()
def _predict(network: nn.Module, images: np.ndarray, device: torch.device | str, batch_size: int | None,
             shifts: Sequence[tuple[int, int]], unsure_below: float | None, precision: str,
             ) -> tuple[np.ndarray, np.ndarray]:
    """The images' own probabilities, and the same with the shifted copies averaged in where unsure."""
    network.eval()
    device = torch.device(device)
    batch_size = batch_size or (4096 if device.type == "cuda" else 256)
    if shifts[0] != (0, 0):
        raise ValueError("the first of the shifts must be (0, 0), the image itself")
    dtype = autocast_dtype(precision, device)

    def proba(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = network(batch.contiguous(memory_format=torch.channels_last))
        return torch.softmax(logits.float(), dim=1)

    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    plain = np.zeros((len(images), N_CLASSES), dtype=np.float32)
    out = plain.copy() if len(shifts) > 1 else plain
    for start in range(0, len(pixels), batch_size):
        x = to_input(pixels[start:start + batch_size].to(device))
        own = proba(x)
        plain[start:start + len(x)] = own.cpu().numpy()
        if len(shifts) > 1:
            unsure = torch.ones(len(x), dtype=torch.bool, device=device) if unsure_below is None else (
                own.max(1).values < unsure_below)
            if bool(unsure.any()):
                doubtful = x[unsure]
                total = own[unsure] + sum(proba(shifted(doubtful, dy, dx)) for dy, dx in shifts[1:])
                own[unsure] = total / len(shifts)
            out[start:start + len(x)] = own.cpu().numpy()
    return plain, out


def log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true labels under ``proba``."""
    p = proba[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(proba.argmax(1) == labels))


def confident_errors(proba: np.ndarray, labels: np.ndarray, k: int = 12) -> np.ndarray:
    """Indices of up to ``k`` misclassified images, most confidently wrong first."""
    predicted = proba.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = proba[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence)][:k]


@dataclass(frozen=True)
class SharedErrors:
    """Where networks scored on the same rows err together. Averaging can mend only rows that some of them get
    right, so the rows two networks both get wrong, against what they would share if their mistakes were
    independent (``a * b / rows``), measure the diversity an ensemble has to work with."""

    rows: int
    errors: tuple[int, ...]           # each network's
    average: int                      # the mean of their probabilities'
    both: tuple[tuple[int, ...], ...]  # both[i][j]: rows networks i and j both get wrong; both[i][i] = errors[i]
    wrong_in_all: int
    wrong_in_any: int

    def if_independent(self, i: int, j: int) -> float:
        """The rows networks i and j would both get wrong if their mistakes were independent."""
        return self.errors[i] * self.errors[j] / self.rows

    def summary(self) -> dict:
        """The figures a run's metrics record: means over the pairs of networks."""
        pairs = list(combinations(range(len(self.errors)), 2))
        return {"rows": self.rows, "errors": list(self.errors), "average": self.average,
                "both_wrong": round(float(np.mean([self.both[i][j] for i, j in pairs])), 2),
                "if_independent": round(float(np.mean([self.if_independent(i, j) for i, j in pairs])), 2),
                "wrong_in_all": self.wrong_in_all, "wrong_in_any": self.wrong_in_any}


def shared_errors(probas: Sequence[np.ndarray], labels: np.ndarray) -> SharedErrors:
    """:class:`SharedErrors` of two or more networks' probabilities ``(n, 10)`` of the same rows."""
    if len(probas) < 2:
        raise ValueError("shared errors need at least two networks")
    wrong = np.stack([p.argmax(1) != labels for p in probas]).astype(np.int64)
    both = wrong @ wrong.T
    return SharedErrors(len(labels), tuple(int(e) for e in wrong.sum(1)),
                        int((np.mean(probas, axis=0).argmax(1) != labels).sum()),
                        tuple(tuple(int(v) for v in row) for row in both),
                        int(wrong.all(0).sum()), int(wrong.any(0).sum()))
