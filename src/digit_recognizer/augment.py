"""Random affine augmentation of whole image batches, on whatever device the batch lives on.

One affine matrix per image and a single ``grid_sample`` call for the batch: no per-image Python loop.
There are deliberately no flips: a mirrored 6 or 9 is another digit (or none).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    rotation: float = 10.0,
    zoom: float = 0.1,
    shift: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate, zoom and shift each image of a ``(n, c, h, w)`` batch by its own random amount.

    Args:
        images: float batch, background 0.
        rotation: largest rotation in degrees, drawn uniformly from ``[-rotation, rotation]``.
        zoom: largest relative zoom, the scale is drawn from ``[1 - zoom, 1 + zoom]``.
        shift: largest shift as a fraction of the width (horizontal) and height (vertical).
        generator: random source, on the same device as ``images``, for reproducible batches.

    Returns a batch of the same shape, dtype and device. Bilinear interpolation keeps values within the
    range of the input, and pixels shifted in from outside are 0 (background).
    """
    n = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        u = torch.rand(n, device=images.device, generator=generator, dtype=torch.float32)
        return (2 * u - 1) * limit

    angle = uniform(math.radians(rotation))
    scale = 1 + uniform(zoom)
    # affine_grid works in normalised coordinates where the full width spans 2 units.
    tx, ty = uniform(2 * shift), uniform(2 * shift)
    # The matrix maps output coordinates to input coordinates, hence the division by the scale.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([cos, -sin, tx, sin, cos, ty], dim=1).view(n, 2, 3).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
