"""Writing Kaggle's submission file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_path


def write_submission(labels: np.ndarray, path: str | Path) -> None:
    """Kaggle's format: header ``ImageId,Label``, one row per test image, ImageId counted from 1."""
    frame = pd.DataFrame({"ImageId": np.arange(1, len(labels) + 1), "Label": labels.astype(int)})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
