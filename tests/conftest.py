from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digit_recognizer.config import method_config
from digit_recognizer.data import Digits, load_embedded, read_train, write_csv
from digit_recognizer.pipeline import train_run

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "digit-recognizer"


@pytest.fixture(scope="session")
def embedded() -> tuple[Digits, Digits]:
    return load_embedded()


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, embedded) -> Path:
    """A Kaggle-style folder with 200 labelled and 30 unlabelled real digits."""
    train, test = embedded
    folder = tmp_path_factory.mktemp("small")
    write_csv(Digits(train.images[:200], train.labels[:200]), folder / "train.csv")
    write_csv(Digits(test.images[:30]), folder / "test.csv")
    return folder


@pytest.fixture(scope="session")
def served_run(tmp_path_factory, embedded) -> Path:
    """A fast-preset network for the serving tests: trained on 20,000 competition rows where they are here
    (good enough to read printed digits), else on the embedded digits (good enough for the API tests)."""
    out = tmp_path_factory.mktemp("served")
    if has_shared_data():
        full = read_train(SHARED_DATA / "train.csv.gz")
        train, epochs = Digits(full.images[:20_000], full.labels[:20_000]), 6
    else:
        train, epochs = embedded[0], 10
    cfg = method_config("fast")
    # Settings of its own, so that a change of the preset's recipe does not move the serving tests: with
    # label smoothing, this short training reads DejaVu's "1" (a foot that MNIST ones lack) as a 2.
    cfg.epochs, cfg.label_smoothing = epochs, 0.0
    train_run(train, out, "fast", cfg, progress=False)
    return out


def has_shared_data() -> bool:
    return (SHARED_DATA / "train.csv.gz").is_file()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The competition's files, where this checkout has them beside it; the tests that need them skip otherwise."""
    if not has_shared_data():
        pytest.skip(f"competition data not found at {SHARED_DATA}")
    return SHARED_DATA


def asymmetric_digit() -> np.ndarray:
    """A 28x28 uint8 image with all its ink in the left half: a flip would move it to the right."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:22, 5:11] = 255
    return image
