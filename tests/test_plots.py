"""Figures that stay readable whatever the run gives them."""

from __future__ import annotations

import numpy as np
import pytest

from digit_recognizer.plots import plot_errors


@pytest.mark.parametrize("errors", [1, 2, 8])
def test_the_error_gallery_fits_its_errors_and_its_title_clears_them(errors):
    """As many columns as errors (up to 6), no empty panels in the first row, and the title above every
    caption rather than over one."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 784)).astype(np.uint8)
    proba = np.full((10, 10), 0.01)
    proba[:, 3] = 0.91
    fig = plot_errors(images, np.arange(10), proba, np.arange(errors))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == errors and len(fig.axes) == min(6, errors) * -(-errors // 6)
    title = fig._suptitle.get_window_extent(renderer)
    for ax in shown:
        caption = ax.title.get_window_extent(renderer)
        assert title.y0 >= caption.y1 - 1, "the title overlaps a caption"
