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
    elastic: float = 0.0,
) -> torch.Tensor:
    """Rotate, zoom and shift each image of a ``(n, c, h, w)`` batch by its own random amount, and with
    ``elastic`` also distort it elastically.

    Args:
        images: float batch, background 0.
        rotation: largest rotation in degrees, drawn uniformly from ``[-rotation, rotation]``.
        zoom: largest relative zoom, the scale is drawn from ``[1 - zoom, 1 + zoom]``.
        shift: largest shift as a fraction of the width (horizontal) and height (vertical).
        generator: random source, on the same device as ``images``, for reproducible batches.
        elastic: strength of an elastic distortion (Simard et al. 2003), in pixels: a random displacement per
            pixel, uniform in [-1, 1], smoothed by a Gaussian of :data:`ELASTIC_SIGMA` pixels and scaled by
            ``elastic`` (Simard's 34 moves pixels by about 1.5 on average); 0: none.

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
    if elastic:
        grid = grid + _elastic_field(n, *images.shape[-2:], elastic, images.device, generator).to(grid.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


ELASTIC_SIGMA = 4.0  # pixels: the smoothing of the elastic displacement (Simard et al. 2003)


def _elastic_field(n: int, h: int, w: int, alpha: float, device: torch.device,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Random smooth displacements ``(n, h, w, 2)`` in affine_grid's normalised coordinates (x, y)."""
    field = torch.rand(n, 2, h, w, device=device, generator=generator) * 2 - 1
    radius = int(2 * ELASTIC_SIGMA)
    taps = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-taps**2 / (2 * ELASTIC_SIGMA**2))
    kernel = kernel / kernel.sum()
    # Separable Gaussian over each of the two displacement maps (groups=2), zero beyond the border.
    field = F.conv2d(field, kernel.view(1, 1, -1, 1).repeat(2, 1, 1, 1), padding=(radius, 0), groups=2)
    field = F.conv2d(field, kernel.view(1, 1, 1, -1).repeat(2, 1, 1, 1), padding=(0, radius), groups=2)
    # Pixels to normalised units: the full width (height) spans 2.
    scale = torch.tensor([2 * alpha / w, 2 * alpha / h], device=device).view(1, 2, 1, 1)
    return (field * scale).permute(0, 2, 3, 1)
