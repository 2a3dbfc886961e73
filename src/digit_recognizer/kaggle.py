"""The Kaggle round trip: download the competition's files, check a submission, submit it.

Built on the official ``kaggle`` package (the ``kaggle`` extra), imported only when a command needs it: many of
its versions authenticate as they are imported, and print or exit when no credentials are found. Credentials are
found the way that package finds them (``KAGGLE_API_TOKEN`` or ``~/.kaggle/access_token``, a legacy
``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME`` / ``KAGGLE_KEY``, or ``kaggle auth login``). Whatever goes wrong
on the way (the package missing, no credentials, no network, an error answered by the API) is one
:class:`KaggleError` saying what to do; the package's own printing is kept off the terminal.

:func:`check_submission` checks a file as the leaderboard would, without the network, so that a bad file is
refused before it spends one of the day's submissions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data import DataError
from .files import atomic_path

COMPETITION = "digit-recognizer"
TEST_ROWS = 28_000
HEADER = "ImageId,Label"
DATA_FILES = ("train.csv", "test.csv", "sample_submission.csv")  # the only members taken from Kaggle's zip
MAX_SUBMISSION = 4 << 20     # bytes; a valid submission is about 210 KB
MAX_MEMBER = 512 << 20       # bytes, unpacked; Kaggle's train.csv is about 75 MB

INSTALL_HINT = ("the Kaggle commands need the kaggle package: pip install 'digit-recognizer[kaggle]' "
                "(or pip install -e '.[kaggle]' in a checkout)")
NO_CREDENTIALS = ("no Kaggle credentials found: create an API token at https://www.kaggle.com/settings/api and save "
                  "it to ~/.kaggle/access_token (or export KAGGLE_API_TOKEN=...), then try again")
_INTEGER = re.compile(r"[0-9]{1,9}")


class KaggleError(Exception):
    """The Kaggle API cannot be used or answered with an error; the message says what to do (exit code 2)."""


class SubmissionError(DataError):
    """A submission file the leaderboard would refuse; the message names the file, the line and the fault."""


# --- checking a submission -------------------------------------------------------------------------------------

def check_submission(path: str | Path, rows: int = TEST_ROWS) -> None:
    """Refuse (:class:`SubmissionError`) a file the leaderboard would not score: the header ``ImageId,Label``,
    then ``rows`` rows, each ImageId 1 .. ``rows`` exactly once, each Label a digit 0-9."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    if path.stat().st_size > MAX_SUBMISSION:
        raise SubmissionError(f"{path}: {path.stat().st_size:,} bytes is far more than a submission of "
                              f"{rows:,} rows holds")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SubmissionError(f"{path}: not UTF-8 text (byte {err.start:,})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SubmissionError(f"{path}: empty file; expected the header {HEADER} and {rows:,} rows")
    if lines[0].strip() != HEADER:
        raise SubmissionError(f"{path}: line 1: the header must be {HEADER}, got {lines[0][:60]!r}")
    seen: dict[int, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.strip().split(",")
        if len(fields) != 2:
            raise SubmissionError(f"{path}: line {number}: expected 2 values (ImageId,Label), got {len(fields)}")
        image_id, label = fields
        if not _INTEGER.fullmatch(image_id) or not 1 <= int(image_id) <= rows:
            raise SubmissionError(f"{path}: line {number}, column ImageId: {image_id[:20]!r} is not a whole number "
                                  f"in 1-{rows}")
        if int(image_id) in seen:
            raise SubmissionError(f"{path}: line {number}, column ImageId: {int(image_id)} appears twice "
                                  f"(first on line {seen[int(image_id)]})")
        if not _INTEGER.fullmatch(label) or int(label) > 9:
            raise SubmissionError(f"{path}: line {number}, column Label: {label[:20]!r} is not a digit 0-9")
        seen[int(image_id)] = number
    if len(seen) != rows:
        missing = next(i for i in range(1, rows + 1) if i not in seen)
        raise SubmissionError(f"{path}: {len(seen):,} rows, but the leaderboard expects {rows:,}, one per test "
                              f"image (ImageId {missing} is missing)")


# --- unpacking the competition's files -------------------------------------------------------------------------

def unpack(archive: str | Path, out: str | Path) -> list[Path]:
    """Write ``train.csv``, ``test.csv`` and ``sample_submission.csv`` from Kaggle's zip into ``out``, each
    atomically, and nothing else: any other member (a path such as ``../x`` included) is left in the archive.
    Returns the files written; a zip without ``train.csv`` and ``test.csv``, or a damaged one, is a
    :class:`DataError`."""
    archive, out = Path(archive), Path(out)
    written = []
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = {info.filename: info for info in zipped.infolist() if not info.is_dir()}
            for name in ("train.csv", "test.csv"):
                if name not in members:
                    held = ", ".join(sorted(members)[:5]) or "nothing"
                    raise DataError(f"{archive}: no {name} in the archive (it holds {held})")
            for name in DATA_FILES:
                info = members.get(name)
                if info is None:
                    continue
                if info.file_size > MAX_MEMBER:
                    raise DataError(f"{archive}: {name} unpacks to {info.file_size:,} bytes, far more than "
                                    "the competition's file")
                with zipped.open(info) as source, atomic_path(out / name) as tmp, open(tmp, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
                written.append(out / name)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise DataError(f"{archive}: not a readable zip archive ({err})") from None
    return written


# --- the Kaggle API ------------------------------------------------------------------------------------------

def connect() -> Any:
    """An authenticated ``KaggleApi`` (the kaggle package's client); raises :class:`KaggleError` when the package
    is missing or finds no usable credentials."""
    try:
        with _quiet():  # importing the package authenticates in many versions, printing help when that fails
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as err:
        missing = getattr(err, "name", None) or ""
        if missing and missing.split(".")[0] != "kaggle" and importlib.util.find_spec("kaggle") is not None:
            # the package is there but one of its own imports is not: a broken release, not a missing extra
            raise KaggleError(f"the installed kaggle package cannot be imported: it needs '{missing}', which is not "
                              f"installed (pip install {missing.split('.')[0]})") from None
        raise KaggleError(INSTALL_HINT) from None
    except SystemExit:  # the package's answer to missing credentials: print help, exit(1)
        raise KaggleError(NO_CREDENTIALS) from None
    except Exception as err:
        if isinstance(err, OSError) and "kaggle.json" in str(err):  # older versions: no kaggle.json
            raise KaggleError(NO_CREDENTIALS) from None
        raise _explain(err, "signing in") from None
    return api


def download(out: str | Path, api: Any | None = None) -> list[Path]:
    """Download the competition's files and unpack them into ``out`` (see :func:`unpack`); returns the files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    api = api or connect()
    with tempfile.TemporaryDirectory(prefix="digit-recognizer-download-") as folder:
        _call(api.competition_download_files, "downloading", COMPETITION, path=folder, force=True, quiet=True)
        archives = [path for path in sorted(Path(folder).rglob("*")) if path.is_file() and zipfile.is_zipfile(path)]
        if not archives:
            raise KaggleError(f"Kaggle sent no zip archive for '{COMPETITION}'; try again later")
        return unpack(archives[0], out)


def submit(path: str | Path, message: str, api: Any | None = None) -> str:
    """Check ``path`` (:func:`check_submission`), then submit it with ``message``; returns Kaggle's answer."""
    check_submission(path)
    api = api or connect()
    answer, printed = _call(api.competition_submit, "submitting", str(path), message, COMPETITION, quiet=True)
    text = str(getattr(answer, "message", None) or answer or "").strip()
    if not text or text.startswith("Could not submit"):
        detail = printed.strip().splitlines()[-1:] or [text or "no answer"]
        raise KaggleError(f"the submission was not accepted ({detail[0][:200]}); try again later")
    return text.splitlines()[0]


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(printed):
        yield printed


def _call(method: Callable, what: str, *args: Any, **kwargs: Any) -> tuple[Any, str]:
    """Call the kaggle package with its printing captured; returns (its answer, what it printed)."""
    try:
        with _quiet() as printed:
            answer = method(*args, **kwargs)
    except SystemExit:
        raise KaggleError(NO_CREDENTIALS) from None
    except Exception as err:
        raise _explain(err, what) from None
    return answer, printed.getvalue()


_CONNECTION_ERRORS = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutError", "ProxyError",
                      "SSLError", "MaxRetryError", "NewConnectionError", "NameResolutionError", "gaierror"}
_STATUS_HINTS = {
    400: "Kaggle refused the request (400: {detail})",
    401: "Kaggle refused the credentials (401): create a new API token at https://www.kaggle.com/settings/api",
    403: ("Kaggle refused access (403): sign in on the web site and accept the competition's rules at "
          f"https://www.kaggle.com/competitions/{COMPETITION}/rules, then try again"),
    404: f"Kaggle does not know the competition '{COMPETITION}' (404); check that the kaggle package is up to date",
    429: "Kaggle says too many requests (429): the day's submissions may be used up; try again later",
}


def _explain(err: Exception, what: str) -> KaggleError:
    """One line for a failure inside the kaggle package: an HTTP status, a network fault, or anything else."""
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) or getattr(err, "status", None)
    if isinstance(status, int):
        hint = _STATUS_HINTS.get(status, f"Kaggle answered {status} while {what} ({detail}); try again later")
        return KaggleError(hint.format(detail=detail))
    if {cls.__name__ for cls in type(err).__mro__} & _CONNECTION_ERRORS:
        return KaggleError(f"cannot reach the Kaggle API while {what} ({type(err).__name__}): check the network "
                           "connection and any proxy settings, then try again")
    return KaggleError(f"the Kaggle API failed while {what} ({type(err).__name__}: {detail})")
