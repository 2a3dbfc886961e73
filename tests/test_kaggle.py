"""The Kaggle round trip without the internet: the submission check, the unpacking of Kaggle's zip, and every way
the API can fail turned into one line (a real kaggle package with no credentials, and one pointed at a proxy on
loopback that answers nothing). The API object itself is replaced only at the boundary (``kaggle.connect``), so
the download and submit code around it runs for real. A live download runs only where credentials exist."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from digit_recognizer import kaggle
from digit_recognizer.cli import main
from digit_recognizer.data import DataError, Digits, read_test, read_train, write_csv
from digit_recognizer.kaggle import unpack
from digit_recognizer.submission import TEST_ROWS, SubmissionError, check_submission, write_submission

SLUG = "digit-recognizer"
# Looked up, not imported: importing the package authenticates (and writes to the home folder) in many versions.
needs_kaggle = pytest.mark.skipif(importlib.util.find_spec("kaggle") is None,
                                  reason="the kaggle package is not installed (the kaggle extra)")


# --- the submission check --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_lines(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("sub") / "submission.csv"
    write_submission(np.arange(TEST_ROWS) % 10, path)
    return path.read_text().splitlines()


def written(tmp_path: Path, lines: list[str], name: str = "submission.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


def test_a_good_submission_passes(good_lines, tmp_path):
    check_submission(written(tmp_path, good_lines))
    shuffled = [good_lines[0], *reversed(good_lines[1:])]  # any order, CRLF line ends and a BOM are fine
    path = tmp_path / "crlf.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(shuffled).encode() + b"\r\n")
    check_submission(path)


def test_the_competitions_sample_submission_passes(shared_data):
    check_submission(shared_data / "sample_submission.csv")


def _replace(lines: list[str], number: int, line: str) -> list[str]:
    """``lines`` with line ``number`` (1-based, as an editor counts) replaced."""
    return [*lines[:number - 1], line, *lines[number:]]


BAD_FILES = {
    "header": (lambda g: _replace(g, 1, "ImageId,label"), "line 1: the header must be ImageId,Label"),
    "no header": (lambda g: g[1:], "line 1: the header must be ImageId,Label"),
    "a row short": (lambda g: g[:-1], "27,999 rows, but the leaderboard expects 28,000, one per test image "
                                      "(ImageId 28000 is missing)"),
    "a row too many": (lambda g: [*g, "28001,3"], "line 28002, column ImageId: '28001' is not a whole number"),
    "duplicate": (lambda g: _replace(g, 4, "1,5"), "line 4, column ImageId: 1 appears twice (first on line 2)"),
    "id 0": (lambda g: _replace(g, 2, "0,0"), "line 2, column ImageId: '0' is not a whole number in 1-28000"),
    "decimal id": (lambda g: _replace(g, 2, "1.0,0"), "line 2, column ImageId: '1.0'"),
    "label 10": (lambda g: _replace(g, 3, "2,10"), "line 3, column Label: '10' is not a digit 0-9"),
    "negative label": (lambda g: _replace(g, 3, "2,-1"), "line 3, column Label: '-1' is not a digit 0-9"),
    "empty label": (lambda g: _replace(g, 3, "2,"), "line 3, column Label: '' is not a digit 0-9"),
    "three columns": (lambda g: _replace(g, 5, "4,3,1"), "line 5: expected 2 values (ImageId,Label), got 3"),
    "empty file": (lambda g: [], "empty file"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_kaggle_submit_refuses_a_bad_file_before_contacting_kaggle(case, good_lines, tmp_path, capsys, monkeypatch):
    make, message = BAD_FILES[case]
    monkeypatch.setattr(kaggle, "connect", lambda: pytest.fail("a bad file must not reach Kaggle"))
    path = written(tmp_path, make(good_lines))
    with pytest.raises(SubmissionError, match="^" + re.escape(str(path))):
        check_submission(path)
    assert main(["kaggle", "submit", str(path), "-m", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("digit-recognizer: error: ")
    assert message in err


def test_kaggle_submit_refuses_a_missing_file_and_an_empty_message(good_lines, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(kaggle, "connect", lambda: pytest.fail("must not reach Kaggle"))
    assert main(["kaggle", "submit", str(tmp_path / "nothing.csv"), "-m", "test"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["kaggle", "submit", str(written(tmp_path, good_lines)), "-m", " "]) == 2
    assert "-m needs a description" in capsys.readouterr().err


# --- downloading: Kaggle's zip, unpacked safely ------------------------------------------------------------------

@pytest.fixture(scope="module")
def kaggle_zip(tmp_path_factory, embedded) -> Path:
    """A zip laid out like Kaggle's digit-recognizer.zip (built from the embedded digits), plus members that
    must never be unpacked: a path out of the folder, a nested copy, another file."""
    train, test = embedded
    folder = tmp_path_factory.mktemp("kaggle")
    write_csv(Digits(train.images[:300], train.labels[:300]), folder / "train.csv")
    write_csv(Digits(test.images[:50]), folder / "test.csv")
    write_submission(np.zeros(50, dtype=int), folder / "sample_submission.csv")
    archive = folder / f"{SLUG}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name in ("train.csv", "test.csv", "sample_submission.csv"):
            zipped.write(folder / name, name)
        zipped.writestr("../escaped.csv", "label\n")
        zipped.writestr("nested/train.csv", "not the training file\n")
        zipped.writestr("notes.txt", "hello\n")
    return archive


def test_unpack_takes_only_the_competitions_files(kaggle_zip, embedded, tmp_path):
    out = tmp_path / "data" / "digits"
    got = unpack(kaggle_zip, out)
    assert [p.name for p in got.files] == ["train.csv", "test.csv", "sample_submission.csv"]
    assert (got.train_images, got.test_images) == (300, 50)
    assert sorted(p.name for p in out.iterdir()) == ["sample_submission.csv", "test.csv", "train.csv"]
    assert not (tmp_path / "data" / "escaped.csv").exists() and not list(tmp_path.rglob("escaped.csv"))
    train, test = read_train(out / "train.csv"), read_test(out / "test.csv")
    np.testing.assert_array_equal(train.images, embedded[0].images[:300])
    np.testing.assert_array_equal(train.labels, embedded[0].labels[:300])
    np.testing.assert_array_equal(test.images, embedded[1].images[:50])


def test_unpack_removes_what_a_killed_unpacking_left_and_nothing_else(kaggle_zip, tmp_path):
    """A staging folder left by an unpacking killed before its clean-up is removed by the next one; folders of the
    same shape of name that hold anything but the competition's files are someone else's and stay."""
    out = tmp_path / "digits"
    stale = out / f"{kaggle.STAGING_PREFIX}k1ll3d_x"
    stale.mkdir(parents=True)
    (stale / "train.csv").write_text("label,pixel0\n1,")  # cut short
    notes = out / f"{kaggle.STAGING_PREFIX}notes123"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine\n")
    nested = out / f"{kaggle.STAGING_PREFIX}nested01"
    (nested / "train.csv").mkdir(parents=True)
    unpack(kaggle_zip, out)
    assert not stale.exists()
    assert (notes / "notes.txt").read_text() == "mine\n" and (nested / "train.csv").is_dir()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "sample_submission.csv", "test.csv", "train.csv"]


def test_unpack_refuses_an_archive_without_the_data_or_not_a_zip(tmp_path):
    archive = tmp_path / "partial.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("train.csv", "label\n")
        zipped.writestr("../test.csv", "pixel0\n")
    with pytest.raises(DataError, match=r"no test\.csv in the archive"):
        unpack(archive, tmp_path / "out")
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a readable zip archive"):
        unpack(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    """A zip of ``members`` as given, stored uncompressed (so that its headers can be found in the bytes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zipped:
        for name, data in members:
            zipped.writestr(name, data)
    return path


def _member(name: str, file_type: int) -> zipfile.ZipInfo:
    """A member recorded as made on Unix with the given file type (a link, a device...)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (file_type | 0o644) << 16
    return info


def _set_encrypted(archive: Path, name: str) -> None:
    """Mark member ``name`` as encrypted (general purpose flag bit 0), in its local header and in the central
    directory, as a zip tool does for a password-protected member."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zipped:
        local = zipped.getinfo(name).header_offset
    assert data[local:local + 4] == b"PK\x03\x04"
    data[local + 6] |= 1
    central = data.find(b"PK\x01\x02")
    while central != -1:
        length = int.from_bytes(data[central + 28:central + 30], "little")
        if data[central + 46:central + 46 + length] == name.encode():
            data[central + 8] |= 1
        central = data.find(b"PK\x01\x02", central + 1)
    archive.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def new_csvs(kaggle_zip) -> dict[str, bytes]:
    """The good train.csv and test.csv of the Kaggle-like zip."""
    with zipfile.ZipFile(kaggle_zip) as zipped:
        return {name: zipped.read(name) for name in ("train.csv", "test.csv")}


@pytest.mark.parametrize(("member", "fault"), [
    (_member("train.csv", stat.S_IFLNK), "train.csv is a symbolic link, not a plain file"),
    (_member("train.csv", stat.S_IFCHR), "train.csv is a device, not a plain file"),
    (_member("train.csv", stat.S_IFIFO), "train.csv is a named pipe, not a plain file"),
    (_member("train.csv", stat.S_IFDIR), "train.csv is a directory, not a plain file"),
])
def test_unpack_refuses_a_member_that_is_not_a_plain_file(member, fault, new_csvs, tmp_path):
    archive = _zip(tmp_path / "odd.zip", [(member, b"../../elsewhere"), ("test.csv", new_csvs["test.csv"])])
    with pytest.raises(DataError, match=re.escape(f"{archive}: {fault}")):
        unpack(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.zip"]  # no folder, no file, no staging left


def test_unpack_refuses_an_oversized_or_repeated_member(new_csvs, tmp_path, monkeypatch):
    archive = _zip(tmp_path / "big.zip", list(new_csvs.items()))
    monkeypatch.setattr(kaggle, "MAX_MEMBER", len(new_csvs["train.csv"]) - 1)
    with pytest.raises(DataError, match=r"train\.csv unpacks to [0-9,]+ bytes, far more than"):
        unpack(archive, tmp_path / "out")
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="Duplicate name"):  # zipfile writes it, warning
        archive = _zip(tmp_path / "twice.zip", [*new_csvs.items(), ("test.csv", b"pixel0\n")])
    with pytest.raises(DataError, match=r"test\.csv appears more than once"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class FakeKaggle:
    """Stands in for the kaggle package's ``KaggleApi`` (the same methods and arguments), without a network."""

    def __init__(self, archive: Path | None = None, answer: str = "Successfully submitted to Digit Recognizer",
                 error: Exception | None = None) -> None:
        self.archive, self.answer, self.error, self.calls = archive, answer, error, []

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        self.calls.append(("download", competition))
        if self.error:
            raise self.error
        print("Downloading digit-recognizer.zip ...")  # the package prints: kept off the terminal
        shutil.copy(self.archive, Path(path) / f"{competition}.zip")

    def competition_submit(self, file_name, message, competition, quiet=False):
        self.calls.append(("submit", Path(file_name).read_text().count("\n"), message, competition))
        if self.error:
            raise self.error
        return SimpleNamespace(message=self.answer)


def test_kaggle_download_unpacks_into_a_folder_that_run_reads(kaggle_zip, tmp_path, capsys, monkeypatch):
    api = FakeKaggle(kaggle_zip)
    monkeypatch.setattr(kaggle, "connect", lambda: api)
    out = tmp_path / "data"
    assert main(["kaggle", "download", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert api.calls == [("download", SLUG)]
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "300 training and 50 test images" in captured.err and f"run --data-dir {out}" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["sample_submission.csv", "test.csv", "train.csv"]
    run_out = tmp_path / "run"
    assert main(["run", "--data-dir", str(out), "--out", str(run_out), "--preset", "fast", "--epochs", "1",
                 "--quiet"]) == 0
    assert len((run_out / "submission.csv").read_text().splitlines()) == 51


@pytest.fixture
def old_data(tmp_path, embedded, monkeypatch) -> tuple[Path, dict[str, bytes]]:
    """A --out folder that already holds good train.csv and test.csv (other digits than the zip's), and their
    bytes. The system's temporary folder is moved under tmp_path, so that what is left there can be seen."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()
    train, test = embedded
    out = tmp_path / "data"
    write_csv(Digits(train.images[-20:], train.labels[-20:]), out / "train.csv")
    write_csv(Digits(test.images[-10:]), out / "test.csv")
    return out, {path.name: path.read_bytes() for path in out.iterdir()}


def _download_refused(archive: Path | None, out: Path, capsys, monkeypatch) -> str:
    """Run ``kaggle download --out out`` against ``archive`` (None: no credentials); returns its one error line
    after checking the exit code and that nothing was left in the system's temporary folder."""
    def no_credentials():
        raise kaggle.KaggleError(kaggle.NO_CREDENTIALS)

    monkeypatch.setattr(kaggle, "connect", no_credentials if archive is None else lambda: FakeKaggle(archive))
    assert main(["kaggle", "download", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("digit-recognizer: error: ")
    assert not list(Path(tempfile.gettempdir()).iterdir())  # the downloaded zip is gone too
    return captured.err


def _unchanged(out: Path, old: dict[str, bytes]) -> bool:
    """Whether ``out`` holds exactly the old files, byte for byte: nothing replaced, nothing (no staging) added."""
    return {path.name: path.read_bytes() for path in out.iterdir()} == old


def test_a_good_download_replaces_the_old_files(old_data, kaggle_zip, new_csvs, capsys, monkeypatch):
    out, old = old_data
    monkeypatch.setattr(kaggle, "connect", lambda: FakeKaggle(kaggle_zip))
    assert main(["kaggle", "download", "--out", str(out)]) == 0
    assert "300 training and 50 test images" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["sample_submission.csv", "test.csv", "train.csv"]
    assert {name: (out / name).read_bytes() for name in new_csvs} == new_csvs != old
    assert not list(Path(tempfile.gettempdir()).iterdir())


def test_a_corrupt_test_csv_replaces_nothing(old_data, new_csvs, capsys, monkeypatch):
    out, old = old_data
    header, first, *rest = new_csvs["test.csv"].decode().splitlines()
    corrupt = "\n".join([header, first, "300" + first[1:], *rest]).encode() + b"\n"  # line 3: a pixel of 300
    archive = _zip(out.parent / "corrupt.zip", [("train.csv", new_csvs["train.csv"]), ("test.csv", corrupt)])
    err = _download_refused(archive, out, capsys, monkeypatch)
    assert _unchanged(out, old)
    assert "Kaggle's digit-recognizer.zip: test.csv: line 3, column pixel0" in err
    fresh = out.parent / "fresh" / "data"  # a folder the command made is removed again
    _download_refused(archive, fresh, capsys, monkeypatch)
    assert not (out.parent / "fresh").exists()


def test_a_symlink_member_replaces_nothing(old_data, new_csvs, capsys, monkeypatch):
    out, old = old_data
    link = _member("train.csv", stat.S_IFLNK)
    archive = _zip(out.parent / "link.zip", [(link, b"../../secret"), ("test.csv", new_csvs["test.csv"])])
    err = _download_refused(archive, out, capsys, monkeypatch)
    assert _unchanged(out, old)
    assert "Kaggle's digit-recognizer.zip: train.csv is a symbolic link, not a plain file" in err


def test_an_encrypted_member_is_one_line_and_replaces_nothing(old_data, new_csvs, capsys, monkeypatch):
    out, old = old_data
    archive = _zip(out.parent / "locked.zip", list(new_csvs.items()))
    _set_encrypted(archive, "test.csv")
    with zipfile.ZipFile(archive) as zipped, pytest.raises(RuntimeError, match="password required"):
        zipped.read("test.csv")  # the archive is what a password-protected one looks like to zipfile
    err = _download_refused(archive, out, capsys, monkeypatch)
    assert _unchanged(out, old)
    assert "Kaggle's digit-recognizer.zip: test.csv is encrypted (password-protected)" in err


def test_no_credentials_creates_and_replaces_nothing(old_data, capsys, monkeypatch):
    out, old = old_data
    assert "no Kaggle credentials found" in _download_refused(None, out, capsys, monkeypatch)
    assert _unchanged(out, old)
    fresh = out.parent / "fresh" / "data"
    assert "no Kaggle credentials found" in _download_refused(None, fresh, capsys, monkeypatch)
    assert not (out.parent / "fresh").exists()


def test_kaggle_submit_sends_a_good_file_with_its_message(good_lines, tmp_path, capsys, monkeypatch):
    api = FakeKaggle()
    monkeypatch.setattr(kaggle, "connect", lambda: api)
    path = written(tmp_path, good_lines)
    assert main(["kaggle", "submit", str(path), "-m", "fast preset"]) == 0
    assert api.calls == [("submit", TEST_ROWS + 1, "fast preset", SLUG)]
    assert "Successfully submitted" in capsys.readouterr().err


def _http_error(status: int) -> Exception:
    import requests

    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize(("status", "message"), [
    (401, "refused the credentials (401)"), (403, "accept the competition's rules"),
    (429, "too many requests (429)"), (500, "Kaggle answered 500"),
])
def test_api_errors_are_one_line(status, message, kaggle_zip, good_lines, tmp_path, capsys, monkeypatch):
    pytest.importorskip("requests")
    monkeypatch.setattr(kaggle, "connect", lambda: FakeKaggle(kaggle_zip, error=_http_error(status)))
    assert main(["kaggle", "download", "--out", str(tmp_path / "data")]) == 2
    assert main(["kaggle", "submit", str(written(tmp_path, good_lines)), "-m", "x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 2 and captured.err.count(message) == 2


def test_a_submission_kaggle_does_not_accept_is_an_error(good_lines, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(kaggle, "connect", lambda: FakeKaggle(answer="Could not submit to competition"))
    assert main(["kaggle", "submit", str(written(tmp_path, good_lines)), "-m", "x"]) == 2
    assert "not accepted" in capsys.readouterr().err


def test_without_the_kaggle_package_the_commands_say_how_to_install_it(tmp_path, capsys, monkeypatch):
    for name in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    assert main(["kaggle", "download", "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'digit-recognizer[kaggle]'" in err


def test_a_kaggle_release_missing_its_own_dependency_is_named(tmp_path, capsys, monkeypatch):
    # A release that imports a module it does not declare (kaggle 2.2.5 and six) is told apart from a missing extra.
    package = tmp_path / "kaggle" / "api"
    package.mkdir(parents=True)
    (tmp_path / "kaggle" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "kaggle_api_extended.py").write_text("import a_module_nobody_installed\n")
    for name in [name for name in sys.modules if name == "kaggle" or name.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["kaggle", "download", "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "needs 'a_module_nobody_installed'" in err and "pip install a_module_nobody_installed" in err
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


# --- run --submit ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kaggle_sized_data(tmp_path_factory, small_data_dir) -> Path:
    """200 training digits and a test file of Kaggle's 28,000 rows (the 30 test digits, repeated)."""
    folder = tmp_path_factory.mktemp("kaggle-sized")
    shutil.copy(small_data_dir / "train.csv", folder / "train.csv")
    header, *rows = (small_data_dir / "test.csv").read_text().splitlines()
    lines = [header] + [rows[i % len(rows)] for i in range(TEST_ROWS)]
    (folder / "test.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_run_submit_checks_and_submits_at_the_end(kaggle_sized_data, tmp_path, capsys, monkeypatch):
    api = FakeKaggle()
    monkeypatch.setattr(kaggle, "connect", lambda: api)
    out = tmp_path / "run"
    assert main(["run", "--data-dir", str(kaggle_sized_data), "--out", str(out), "--preset", "fast", "--epochs", "1",
                 "--quiet", "--submit", "fast, 1 epoch"]) == 0
    assert api.calls == [("submit", TEST_ROWS + 1, "fast, 1 epoch", SLUG)]
    check_submission(out / "submission.csv")
    assert "submitted" in capsys.readouterr().err


def test_run_submit_refuses_before_training(small_data_dir, kaggle_sized_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(kaggle, "connect", lambda: pytest.fail("must not reach Kaggle"))
    out = tmp_path / "run"
    assert main(["run", "--data-dir", str(small_data_dir), "--out", str(out), "--submit", "x"]) == 2
    assert "the test set has 30 images, but the leaderboard scores Kaggle's 28,000" in capsys.readouterr().err
    assert main(["run", "--data-dir", str(kaggle_sized_data), "--out", str(out), "--submit", ""]) == 2
    assert "--submit needs a description" in capsys.readouterr().err

    def no_credentials():
        raise kaggle.KaggleError(kaggle.NO_CREDENTIALS)

    monkeypatch.setattr(kaggle, "connect", no_credentials)
    assert main(["run", "--data-dir", str(kaggle_sized_data), "--out", str(out), "--submit", "x"]) == 2
    assert "no Kaggle credentials found" in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written


# --- the real kaggle package, no credentials or no network -----------------------------------------------------

def _isolated_env(home: Path, **extra: str) -> dict:
    """This environment without any Kaggle credentials or proxy settings, and a home of its own."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("KAGGLE_") and "proxy" not in key.lower()}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), **extra)
    return env


def _command(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digit_recognizer.cli", *args], env=env, capture_output=True,
                          text=True, timeout=180)


@needs_kaggle
def test_missing_credentials_are_one_line(tmp_path, good_lines):
    env = _isolated_env(tmp_path)
    for args in (["kaggle", "download", "--out", str(tmp_path / "data")],
                 ["kaggle", "submit", str(written(tmp_path, good_lines)), "-m", "x"]):
        done = _command(args, env)
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""  # the package's own help text is kept off the terminal
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith("digit-recognizer: error: no Kaggle credentials found: create an API token")


@pytest.fixture
def silent_proxy():
    """A 'proxy' on loopback that accepts connections and closes them: where every request of the client goes
    (and is recorded), so that nothing leaves this machine and Kaggle is unreachable."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen, stop = [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    seen.append(connection.recv(200))
                except OSError:
                    seen.append(b"")
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    stop.set()
    thread.join(timeout=5)
    server.close()


@needs_kaggle
def test_an_unreachable_server_is_one_line(tmp_path, good_lines, silent_proxy):
    proxy, seen = silent_proxy
    env = _isolated_env(tmp_path, KAGGLE_USERNAME="someone", KAGGLE_KEY="0" * 32, NO_PROXY="", no_proxy="",
                        **{name: proxy for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")})
    for args, what in ((["kaggle", "download", "--out", str(tmp_path / "data")], "downloading"),
                       (["kaggle", "submit", str(written(tmp_path, good_lines)), "-m", "x"], "submitting")):
        done = _command(args, env)
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and done.stderr.count("\n") == 1
        assert done.stderr.startswith(f"digit-recognizer: error: cannot reach the Kaggle API while {what}")
    assert len(seen) >= 2 and all(b"kaggle.com" in request for request in seen)  # it went to the proxy only
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


# --- live: only with credentials ------------------------------------------------------------------------------

def _has_credentials() -> bool:
    """Whether the kaggle package would find credentials here (the places it looks)."""
    if os.environ.get("KAGGLE_API_TOKEN") or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        return True
    home = Path.home()
    folders = [home / ".kaggle", Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        folders.append(Path(os.environ["KAGGLE_CONFIG_DIR"]))
    names = ("access_token", "access_token.txt", "kaggle.json", "credentials.json")
    return any((folder / name).is_file() for folder in folders for name in names)


@pytest.mark.skipif(not _has_credentials(), reason="no Kaggle credentials here (KAGGLE_API_TOKEN, "
                    "~/.kaggle/access_token or kaggle.json): the live download is not tested")
@needs_kaggle
def test_live_download(tmp_path):
    done = _command(["kaggle", "download", "--out", str(tmp_path)], dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert len(read_train(tmp_path / "train.csv")) == 42_000
    assert len(read_test(tmp_path / "test.csv")) == TEST_ROWS
    check_submission(tmp_path / "sample_submission.csv")
