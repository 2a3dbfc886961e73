"""Class probabilities from a network, and the scores computed from them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .models import to_input


@torch.inference_mode()
def predict_proba(
    network: nn.Module, images: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 1024
) -> np.ndarray:
    """Softmax probabilities ``(n, 10)`` (float32) for uint8 images ``(n, 784)``."""
    network.eval()
    device = torch.device(device)
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    out = []
    for start in range(0, len(pixels), batch_size):
        x = to_input(pixels[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = network(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    if not out:
        return np.zeros((0, 10), dtype=np.float32)
    return torch.cat(out).numpy()


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
