from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from digit_recognizer.cli import main
from digit_recognizer.data import DataError, Digits, find_csv, read_test, read_train, split, write_csv


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz"])
def test_training_digits_read_back_as_written(name, tmp_path, embedded):
    """Labelled digits written as CSV, plain or gzipped, read back unchanged: uint8 images and their labels."""
    train, _ = embedded
    write_csv(Digits(train.images[:50], train.labels[:50]), tmp_path / "train.csv")
    if name.endswith(".gz"):
        with open(tmp_path / "train.csv", "rb") as src, gzip.open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    back = read_train(tmp_path / name)
    assert back.images.dtype == np.uint8 and back.images.shape == (50, 784)
    np.testing.assert_array_equal(back.images, train.images[:50])
    np.testing.assert_array_equal(back.labels, train.labels[:50])


def test_test_digits_read_back_without_labels(tmp_path, embedded):
    """Unlabelled digits written as CSV read back as images without labels."""
    write_csv(Digits(embedded[1].images[:7]), tmp_path / "test.csv")
    back = read_test(tmp_path / "test.csv")
    assert back.labels is None and back.images.shape == (7, 784)
    np.testing.assert_array_equal(back.images, embedded[1].images[:7])


def test_header_is_kaggles(tmp_path, embedded):
    """A written file's header is Kaggle's: label, pixel0 ... pixel783."""
    write_csv(Digits(embedded[0].images[:2], embedded[0].labels[:2]), tmp_path / "train.csv")
    header = (tmp_path / "train.csv").read_text().splitlines()[0]
    assert header.startswith("label,pixel0,pixel1,") and header.endswith(",pixel783")


def test_find_csv_prefers_existing_file(tmp_path):
    """find_csv finds the gzipped file where there is no plain one, and names the file it cannot find."""
    (tmp_path / "train.csv.gz").write_bytes(b"")
    assert find_csv(tmp_path, "train").name == "train.csv.gz"
    with pytest.raises(DataError, match=r"no test\.csv"):
        find_csv(tmp_path, "test")


def test_split_is_stratified_and_disjoint(embedded):
    """The validation split takes 10 % of each digit, and its rows are not in the training part."""
    train, _ = embedded
    tr, val = split(train, 0.1, seed=0)
    assert len(tr) + len(val) == len(train) and len(val) == 400
    assert np.bincount(val.labels).tolist() == [40] * 10
    assert not {row.tobytes() for row in tr.images} & {row.tobytes() for row in val.images}


def test_embedded_default_is_a_kaggle_style_pair(embedded):
    """The embedded digits are 4,000 labelled ones with every digit, and 1,000 unlabelled."""
    train, test = embedded
    assert train.images.shape == (4000, 784) and test.images.shape == (1000, 784)
    assert test.labels is None
    assert set(np.unique(train.labels)) == set(range(10))


# Each case: which file to spoil, how, and what the one-line message must contain.
def _lines(text: str) -> list[str]:
    return text.splitlines()


def _set_cell(line_no: int, column: int, value: str):
    def spoil(text: str) -> str:
        lines = _lines(text)
        cells = lines[line_no - 1].split(",")
        cells[column] = value
        lines[line_no - 1] = ",".join(cells)
        return "\n".join(lines) + "\n"
    return spoil


def _header(transform):
    def spoil(text: str) -> str:
        lines = _lines(text)
        lines[0] = transform(lines[0])
        return "\n".join(lines) + "\n"
    return spoil


def _drop_column(index: int):
    def spoil(text: str) -> str:
        rows = [line.split(",") for line in _lines(text)]
        return "\n".join(",".join(r[:index] + r[index + 1:]) for r in rows) + "\n"
    return spoil


MALFORMED = {
    "pixel out of range": ("train.csv", _set_cell(5, 100, "256"), ["line 5", "pixel99", "256", "0-255"]),
    # Beyond int16, where the fast typed parse fails and the general one must still name the cell.
    "huge pixel": ("test.csv", _set_cell(4, 783, "70000"), ["line 4", "pixel783", "70000", "0-255"]),
    "negative pixel": ("test.csv", _set_cell(3, 0, "-1"), ["test.csv", "line 3", "pixel0", "-1"]),
    "label out of range": ("train.csv", _set_cell(4, 0, "10"), ["line 4", "label", "0-9"]),
    "non-integer pixel": ("train.csv", _set_cell(6, 10, "1.5"), ["line 6", "pixel9", "1.5", "not an integer"]),
    "text in a pixel": ("test.csv", _set_cell(2, 5, "abc"), ["line 2", "pixel5", "abc", "not an integer"]),
    "missing value": ("train.csv", _set_cell(7, 300, ""), ["line 7", "pixel299", "missing"]),
    "missing label column": ("train.csv", _drop_column(0), ["train.csv", "header", "label"]),
    "783 pixel columns": ("test.csv", _drop_column(783), ["test.csv", "header", "783", "784"]),
    "renamed column": ("train.csv", _header(lambda h: h.replace("pixel17,", "pixel_17,")),
                       ["header column 19", "pixel_17", "pixel17"]),
    "label column in test": ("test.csv", _header(lambda h: "label," + ",".join(h.split(",")[1:])),
                             ["test.csv", "header column 1", "label"]),
    "ragged row": ("train.csv", lambda t: t + "1,2,3\n", ["line 202", "3 fields", "785"]),
    "header only": ("train.csv", lambda t: _lines(t)[0] + "\n", ["train.csv", "no data rows"]),
    "empty file": ("test.csv", lambda t: "", ["test.csv", "empty"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_exits_2_with_one_line_and_no_output(case, small_data_dir, tmp_path, capsys):
    """A malformed train or test file makes run exit 2 with one line naming the file, the line or column and the
    fault, no traceback, and nothing written."""
    name, spoil, expected = MALFORMED[case]
    data_dir = tmp_path / "data"
    shutil.copytree(small_data_dir, data_dir)
    (data_dir / name).write_text(spoil((small_data_dir / name).read_text()))
    out = tmp_path / "out"

    code = main(["run", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", "--quiet"])

    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert name in err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err
    assert _nothing_written(out)


def _nothing_written(out: Path) -> bool:
    return not out.exists()


def _cell(line_no: int, column: int, value: bytes):
    def spoil(data: bytes) -> bytes:
        lines = data.split(b"\n")
        cells = lines[line_no - 1].split(b",")
        cells[column] = value
        lines[line_no - 1] = b",".join(cells)
        return b"\n".join(lines)
    return spoil


def _truncated_gzip(data: bytes) -> bytes:
    packed = gzip.compress(data)
    return packed[: len(packed) // 2]


def _corrupt_gzip(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    packed[len(packed) // 2:len(packed) // 2 + 64] = bytes(64)
    return bytes(packed)


# Hostile files built byte by byte: the name to write (replacing the folder's plain file), how to make it from
# the good file's bytes, and what the one-line message must contain.
HOSTILE = {
    "non-UTF-8 header": ("test.csv", lambda d: b"\xff\xfe" + d, ["line 1", "not UTF-8", "0xff"]),
    # Over the reader's 64 KiB header limit, the path a 200 MB line takes too; once reported as "file is empty".
    "one huge line": ("train.csv", lambda d: b"label," + b"0," * (1 << 20), ["line 1", "header is over", "bytes"]),
    "12.0 in a pixel": ("train.csv", _cell(3, 10, b"12.0"), ["line 3", "pixel9", "'12.0'", "not an integer"]),
    "1e23 in a pixel": ("test.csv", _cell(4, 783, b"1e23"), ["line 4", "pixel783", "'1e23'", "not an integer"]),
    "3.5 as a label": ("train.csv", _cell(5, 0, b"3.5"), ["line 5", "label", "'3.5'", "not an integer"]),
    "spaces around a value": ("train.csv", _cell(6, 3, b" 5"), ["line 6", "pixel2", "' 5'", "spaces"]),
    "hexadecimal value": ("test.csv", _cell(2, 0, b"0x1f"), ["line 2", "pixel0", "'0x1f'", "not an integer"]),
    "quoted value": ("test.csv", _cell(3, 1, b'"7"'), ["line 3", "pixel1", "not an integer"]),
    "label -1": ("train.csv", _cell(8, 0, b"-1"), ["line 8", "label", "-1", "0-9"]),
    "blank lines only": ("train.csv", lambda d: b"\n\r\n\n", ["train.csv", "only blank lines"]),
    "header with a trailing comma": ("test.csv", lambda d: d.replace(b"pixel783\n", b"pixel783,\n", 1),
                                     ["line 1", "ends with a comma"]),
    "no header": ("train.csv", lambda d: d.split(b"\n", 1)[1], ["line 1", "no header"]),
    "line of spaces": ("train.csv", lambda d: d + b"   \n", ["line 202", "1 field", "785"]),
    "truncated gzip": ("train.csv.gz", _truncated_gzip, ["train.csv.gz", "ends early", "truncated"]),
    "corrupt gzip": ("test.csv.gz", _corrupt_gzip, ["test.csv.gz", "corrupt gzip"]),
    "plain text named .gz": ("train.csv.gz", lambda d: d, ["train.csv.gz", "not gzip"]),
    "gzip named .csv": ("test.csv", gzip.compress, ["test.csv", "gzip", "test.csv.gz"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_exits_2_naming_line_and_fault(case, small_data_dir, tmp_path, capsys):
    """A hostile file (bad bytes, odd numbers, broken gzip) raises a DataError naming the line and the fault, and
    run prints exactly that as its one line and exits 2, writing nothing."""
    name, spoil, expected = HOSTILE[case]
    data_dir = tmp_path / "data"
    shutil.copytree(small_data_dir, data_dir)
    plain = data_dir / name.removesuffix(".gz")
    plain.unlink()
    (data_dir / name).write_bytes(spoil((small_data_dir / plain.name).read_bytes()))
    out = tmp_path / "out"

    with pytest.raises(DataError) as raised:
        (read_train if name.startswith("train") else read_test)(data_dir / name)
    code = main(["run", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", "--quiet"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.strip() == f"digit-recognizer: error: {raised.value}", err
    assert str(data_dir / name) in err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert _nothing_written(out)


# Ways of writing the same digits that are harmless and must read exactly as the plain file does.
VARIANTS = {
    "Windows line ends": lambda d: d.replace(b"\n", b"\r\n"),
    "old Mac line ends": lambda d: d.replace(b"\n", b"\r"),
    "UTF-8 byte-order mark": lambda d: b"\xef\xbb\xbf" + d,
    "blank lines": lambda d: b"\n" + d.replace(b"\n", b"\n\n", 3) + b"\n\n",
    "no final newline": lambda d: d.rstrip(b"\n"),
    "leading zeros": lambda d: d.replace(b",0,", b",000,"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_harmless_variants_read_the_same(variant, small_data_dir, tmp_path):
    """Other line ends, a byte-order mark, blank lines and leading zeros read as the plain file does."""
    good = read_train(small_data_dir / "train.csv")
    path = tmp_path / "train.csv"
    path.write_bytes(VARIANTS[variant]((small_data_dir / "train.csv").read_bytes()))
    back = read_train(path)
    np.testing.assert_array_equal(back.images, good.images)
    np.testing.assert_array_equal(back.labels, good.labels)


def test_directory_and_gzip_read_errors(tmp_path):
    """A directory named like the file, and an empty gzip file, are DataErrors saying so."""
    (tmp_path / "train.csv").mkdir()
    with pytest.raises(DataError, match=r"train\.csv: is a directory"):
        read_train(find_csv(tmp_path, "train"))
    (tmp_path / "test.csv.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"test\.csv\.gz: file is empty"):
        read_test(tmp_path / "test.csv.gz")


# A process that reads one file and, on a DataError, prints its line and exits 2 at once, as the command does;
# held to one CPU (where the system allows), so that Arrow's reader threads and interpreter shutdown contend as
# they do on a busy machine. Only NumPy and pyarrow are imported (a quarter of a second; the command takes 3 s
# to import torch), so that many runs fit in a few seconds.
_READ_AND_EXIT = """import os, sys
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {int(sys.argv[1])})
from digit_recognizer.data import DataError, read_test, read_train
try:
    (read_train if sys.argv[2] == "train" else read_test)(sys.argv[3])
except DataError as err:
    print(f"digit-recognizer: error: {err}", file=sys.stderr)
    sys.exit(2)
"""
RUNS = 30


def test_a_process_ending_on_a_data_error_exits_2_every_time(small_data_dir, tmp_path):
    """30 processes, two at a time, each read one of three broken files and end on the data error: every one
    exits with code 2 after exactly its one line.

    What it guards: the process once ended, in up to half the runs on a busy machine, in SIGABRT right after the
    message, when an Arrow CSV reader thread, still releasing a Python-owned buffer, was killed as the interpreter
    shut down (data._load now hands Arrow a buffer it owns). With the pyarrow installed when this test was
    written, that abort did not reproduce even with the old reader put back (0 aborts in 40 runs), so passing
    here does not prove the fix; where the abort does occur, 30 runs miss it with a probability of 4 % if it hits
    1 run in 10, and of 1e-9 if it hits every other run.
    """
    header, *rows = (small_data_dir / "train.csv").read_text().splitlines()
    rows *= 20  # 4,000 rows: several of Arrow's parse blocks, still in flight when one fails
    rows[1] = rows[1].replace(",0,", ",0.5,", 1)
    cases = {"train": ("train.csv", "\n".join([header, *rows]) + "\n", "line 3, column pixel"),
             "header only": ("train.csv", header + "\n", "no data rows"),
             "test": ("test.csv", "pixel_0" + (small_data_dir / "test.csv").read_text()[6:], "header column 1")}
    for case, (name, text, _) in cases.items():
        (tmp_path / case).mkdir()
        (tmp_path / case / name).write_text(text)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]

    def run(i: int) -> tuple[str, subprocess.CompletedProcess]:
        case = list(cases)[i % len(cases)]
        name = cases[case][0]
        command = [sys.executable, "-c", _READ_AND_EXIT, str(cpus[i % len(cpus)]), name.removesuffix(".csv"),
                   str(tmp_path / case / name)]
        return case, subprocess.run(command, capture_output=True, text=True, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(RUNS)))
    for case, result in results:
        name, _, fragment = cases[case]
        assert result.returncode == 2, (case, result.returncode, result.stderr)
        assert result.stderr.count("\n") == 1 and f"{name}: " in result.stderr and fragment in result.stderr, \
            (case, result.stderr)


def test_not_gzip_and_missing_file(tmp_path, capsys):
    """predict with a test file that is not gzip, or is missing, exits 2 naming it, and writes nothing."""
    bad = tmp_path / "test.csv.gz"
    bad.write_bytes(b"this is not gzip")
    assert main(["predict", "--model", str(tmp_path), "--test", str(bad), "--out", str(tmp_path / "s.csv")]) == 2
    assert "test.csv.gz" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--test", str(tmp_path / "nope.csv"),
                 "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err and "not found" in err
    assert not (tmp_path / "s.csv").exists()


def test_data_dir_that_is_a_file_or_an_onnx_that_is_a_folder_is_named_so(tmp_path, capsys):
    """A --data-dir that is a file and an --onnx that is a folder exit 2, each named as what it is."""
    (tmp_path / "train.csv").write_text("label\n")
    assert main(["run", "--data-dir", str(tmp_path / "train.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.csv: a file, not a directory" in err
    assert main(["serve", "--onnx", str(tmp_path), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a directory, not an ONNX file" in err
    assert not (tmp_path / "out").exists()
    os.mkfifo(tmp_path / "pipe.onnx")  # there, but not a file: named as what it is, never read (it would block)
    assert main(["serve", "--onnx", str(tmp_path / "pipe.onnx"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pipe.onnx: not a regular file" in err


def test_read_errors_are_data_errors(tmp_path):
    """A one-row file reads; a label that is not a number is a DataError naming its line and column."""
    path = tmp_path / "train.csv"
    header = "label," + ",".join(f"pixel{i}" for i in range(784)) + "\n"
    path.write_text(header + "3," + ",".join(["0"] * 784) + "\n")
    assert read_train(path).labels.tolist() == [3]
    path.write_text(header + "x," + ",".join(["0"] * 784) + "\n")
    with pytest.raises(DataError, match=r"line 2, column label: 'x' is not an integer"):
        read_train(path)


def test_reads_the_competition_training_file(shared_data: Path):
    """The competition's train.csv.gz reads as 42,000 digits, every digit well represented, ink at full
    intensity."""
    train = read_train(shared_data / "train.csv.gz")
    assert train.images.shape == (42000, 784) and train.labels.shape == (42000,)
    # Every digit is well represented (each is 9-11 % of Kaggle's rows) and the ink reaches full intensity.
    shares = np.bincount(train.labels, minlength=10) / len(train)
    assert shares.min() > 0.08 and shares.max() < 0.12
    assert train.images.max() >= 250 and train.images.min() == 0  # the files may differ from the official ones by 1
