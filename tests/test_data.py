from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from digit_recognizer.cli import main
from digit_recognizer.data import DataError, Digits, find_csv, read_test, read_train, split, write_csv


def test_round_trip_plain_and_gzip(tmp_path, embedded):
    train, test = embedded
    write_csv(Digits(train.images[:50], train.labels[:50]), tmp_path / "train.csv")
    with open(tmp_path / "train.csv", "rb") as src, gzip.open(tmp_path / "train.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    for name in ("train.csv", "train.csv.gz"):
        back = read_train(tmp_path / name)
        assert back.images.dtype == np.uint8 and back.images.shape == (50, 784)
        np.testing.assert_array_equal(back.images, train.images[:50])
        np.testing.assert_array_equal(back.labels, train.labels[:50])
    write_csv(Digits(test.images[:7]), tmp_path / "test.csv")
    back = read_test(tmp_path / "test.csv")
    assert back.labels is None and back.images.shape == (7, 784)


def test_header_is_kaggles(tmp_path, embedded):
    write_csv(Digits(embedded[0].images[:2], embedded[0].labels[:2]), tmp_path / "train.csv")
    header = (tmp_path / "train.csv").read_text().splitlines()[0]
    assert header.startswith("label,pixel0,pixel1,") and header.endswith(",pixel783")


def test_find_csv_prefers_existing_file(tmp_path):
    (tmp_path / "train.csv.gz").write_bytes(b"")
    assert find_csv(tmp_path, "train").name == "train.csv.gz"
    with pytest.raises(DataError, match=r"no test\.csv"):
        find_csv(tmp_path, "test")


def test_split_is_stratified_and_disjoint(embedded):
    train, _ = embedded
    tr, val = split(train, 0.1, seed=0)
    assert len(tr) + len(val) == len(train) and len(val) == 400
    assert np.bincount(val.labels).tolist() == [40] * 10


def test_embedded_default_is_a_kaggle_style_pair(embedded):
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
    assert not out.exists()


def test_not_gzip_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "test.csv.gz"
    bad.write_bytes(b"this is not gzip")
    assert main(["predict", "--model", str(tmp_path), "--test", str(bad), "--out", str(tmp_path / "s.csv")]) == 2
    assert "test.csv.gz" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--test", str(tmp_path / "nope.csv"),
                 "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err and "not found" in err
    assert not (tmp_path / "s.csv").exists()


def test_read_errors_are_data_errors(tmp_path):
    path = tmp_path / "train.csv"
    header = "label," + ",".join(f"pixel{i}" for i in range(784)) + "\n"
    path.write_text(header + "3," + ",".join(["0"] * 784) + "\n")
    assert read_train(path).labels.tolist() == [3]
    path.write_text(header + "x," + ",".join(["0"] * 784) + "\n")
    with pytest.raises(DataError, match=r"line 2, column label: 'x' is not an integer"):
        read_train(path)


def test_reads_the_competition_training_file(shared_data: Path):
    train = read_train(shared_data / "train.csv.gz")
    assert train.images.shape == (42000, 784) and train.labels.shape == (42000,)
    # Every digit is well represented (each is 9-11 % of Kaggle's rows) and the ink reaches full intensity.
    shares = np.bincount(train.labels, minlength=10) / len(train)
    assert shares.min() > 0.08 and shares.max() < 0.12
    assert train.images.max() >= 250 and train.images.min() == 0  # the files may differ from the official ones by 1
