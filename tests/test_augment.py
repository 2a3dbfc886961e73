from __future__ import annotations

import pytest
import torch
from conftest import asymmetric_digit

from digit_recognizer.augment import random_affine


def batch(n: int = 64) -> torch.Tensor:
    return torch.from_numpy(asymmetric_digit()).float().div(255).expand(n, 1, 28, 28).contiguous()


def test_shape_dtype_and_value_range():
    x = torch.rand(32, 1, 28, 28)
    y = random_affine(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1


def test_zero_magnitude_is_the_identity():
    x = torch.rand(16, 1, 28, 28)
    torch.testing.assert_close(random_affine(x, rotation=0, zoom=0, shift=0), x, atol=1e-5, rtol=0)


def test_images_change_and_each_gets_its_own_transform():
    y = random_affine(batch(), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(y, batch())
    assert len({round(v, 4) for v in y.sum(dim=(1, 2, 3)).tolist()}) > 50


def test_reproducible_with_a_generator():
    a = random_affine(batch(), generator=torch.Generator().manual_seed(3))
    b = random_affine(batch(), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_no_flips():
    # The ink starts in columns 5-10; a horizontal flip would put it in 17-22. With shifts up to 10 % of the
    # width and 10 degree rotations it must stay on the left for every image.
    y = random_affine(batch(512), generator=torch.Generator().manual_seed(2))
    left, right = y[..., :14].sum(dim=(1, 2, 3)), y[..., 14:].sum(dim=(1, 2, 3))
    assert bool((left > 5 * right).all())
    # Vertical flip: the bar spans rows 6-21, symmetric, so check a top-heavy mark instead.
    top = torch.zeros(256, 1, 28, 28)
    top[:, :, 3:9, 8:20] = 1
    y = random_affine(top, generator=torch.Generator().manual_seed(4))
    assert bool((y[:, :, :14].sum(dim=(1, 2, 3)) > 5 * y[:, :, 14:].sum(dim=(1, 2, 3))).all())


@pytest.mark.parametrize("axis", [2, 3])
def test_shift_stays_within_ten_percent(axis):
    # Centre of mass of a centred dot moves by at most 10 % of 28 px (plus interpolation slack).
    dot = torch.zeros(256, 1, 28, 28)
    dot[:, :, 13:15, 13:15] = 1
    y = random_affine(dot, rotation=0, zoom=0, shift=0.1, generator=torch.Generator().manual_seed(5))
    coords = torch.arange(28, dtype=torch.float32)
    profile = y.sum(dim=5 - axis)  # sum over the other spatial axis
    centre = (profile.squeeze(1) * coords).sum(1) / profile.squeeze(1).sum(1)
    shift = (centre - 13.5).abs()
    assert shift.max() <= 2.8 + 0.3
    assert shift.max() >= 2.0  # the full range is used, not a tiny fraction of it


def test_elastic_distortion_is_smooth_of_the_asked_strength_and_off_by_default():
    """The elastic field moves pixels by about alpha x 0.04 on average (uniform noise smoothed by a normalised
    Gaussian of 4 pixels), neighbouring pixels move together (smooth, not noise), and without it the random
    stream, hence every other augmentation, is exactly as before."""
    from digit_recognizer.augment import _elastic_field

    field = _elastic_field(256, 28, 28, 34.0, torch.device("cpu"), torch.Generator().manual_seed(0)) * 14  # pixels
    centre = field[:, 8:20, 8:20]  # away from the zero padding of the border
    assert 0.8 < centre.abs().mean() < 2.0
    neighbours = torch.corrcoef(torch.stack([centre[:, :, :-1, 0].flatten(), centre[:, :, 1:, 0].flatten()]))[0, 1]
    assert neighbours > 0.9
    x = torch.rand(4, 1, 28, 28)
    plain = random_affine(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(random_affine(x, generator=torch.Generator().manual_seed(3), elastic=0.0), plain)
    assert not torch.allclose(random_affine(x, generator=torch.Generator().manual_seed(3), elastic=34.0), plain)
