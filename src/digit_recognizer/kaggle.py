"""The Kaggle round trip: download the competition's files, submit a checked submission.

Built on the official ``kaggle`` package (the ``kaggle`` extra), imported only when a command needs it: many of
its versions authenticate as they are imported, and print or exit when no credentials are found. Credentials are
found the way that package finds them (``KAGGLE_API_TOKEN`` or ``~/.kaggle/access_token``, a legacy
``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME`` / ``KAGGLE_KEY``, or ``kaggle auth login``). Whatever goes wrong
on the way (the package missing, no credentials, no network, an error answered by the API) is one
:class:`KaggleError` saying what to do; the package's own printing is kept off the terminal.

A submission is checked (:func:`~digit_recognizer.submission.check_submission`) before anything is sent, so that
a bad file never spends one of the day's submissions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import read_test, read_train
from .errors import DataError, KaggleError
from .submission import check_submission

COMPETITION = "digit-recognizer"
DATA_FILES = ("train.csv", "test.csv", "sample_submission.csv")  # the only members taken from Kaggle's zip
MAX_MEMBER = 512 << 20       # bytes, unpacked; Kaggle's train.csv is about 75 MB

INSTALL_HINT = ("the Kaggle commands need the kaggle package: pip install 'digit-recognizer[kaggle]' "
                "(or pip install -e '.[kaggle]' in a checkout)")
NO_CREDENTIALS = ("no Kaggle credentials found: create an API token at https://www.kaggle.com/settings/api and save "
                  "it to ~/.kaggle/access_token (or export KAGGLE_API_TOKEN=...), then try again")


# --- checking a submission -------------------------------------------------------------------------------------

# --- unpacking the competition's files -------------------------------------------------------------------------

STAGING_PREFIX = ".digit-recognizer-download-"  # the folder inside the destination where a zip is unpacked and checked
_STAGING = re.compile(re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}")  # tempfile.mkdtemp's names
_NOT_PLAIN = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a device",
              stat.S_IFBLK: "a device", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"}
_MSDOS_DIRECTORY = 0x10  # the directory bit of the MS-DOS attributes (the low byte of external_attr)
_ENCRYPTED = 0x1         # bit 0 of a member's general purpose flags
# What zipfile raises on a damaged or crafted archive (its RuntimeError: a member it cannot decrypt).
_UNREADABLE_ZIP = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError,
                   struct.error)


@dataclass(frozen=True)
class Unpacked:
    """What :func:`unpack` put in place: the files, and how many digits the checked train and test files hold."""

    files: list[Path]
    train_images: int
    test_images: int


def unpack(archive: str | Path, out: str | Path, shown_as: str | None = None) -> Unpacked:
    """Put ``train.csv``, ``test.csv`` and ``sample_submission.csv`` from Kaggle's zip into ``out``, and nothing
    else: any other member (a path such as ``../x`` included) is left in the archive.

    All or nothing: the members are unpacked into a folder of the project's own inside ``out``
    (:data:`STAGING_PREFIX`), ``train.csv`` and ``test.csv`` are read there, and only when both pass do the files
    replace those in ``out``, one rename each. Otherwise (a damaged zip, a member that is not a plain file, is
    encrypted or too large, data that does not read) a :class:`DataError` names the archive (``shown_as``, if
    given) and the member; ``out`` is left as it was, and a folder created for it is removed again."""
    archive, out = Path(archive), Path(out)
    label = shown_as or str(archive)
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))  # same filesystem: os.replace works
    except OSError as err:
        _remove_empty(created)
        raise DataError(f"{out}: cannot unpack into this folder ({err.strerror or err})") from None
    done = False
    try:
        names = _extract(archive, label, staging)
        train, test = _check(staging, "train.csv", label), _check(staging, "test.csv", label)
        files = _put_in_place(names, staging, out)
        done = True
        return Unpacked(files, train, test)
    except OSError as err:
        raise DataError(f"{label}: cannot unpack into {out} ({err.strerror or err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            _remove_empty(created)


def _extract(archive: Path, label: str, staging: Path) -> list[str]:
    """Write the competition's members of ``archive`` into ``staging``; returns their names. Every member taken
    is checked before any is written."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            members = {info.filename: info for info in infos if not info.is_dir()}
            for name in ("train.csv", "test.csv"):
                if name not in members:
                    held = ", ".join(sorted(members)[:5]) or "nothing"
                    raise DataError(f"{label}: no {name} in the archive (it holds {held})")
            names = [name for name in DATA_FILES if name in members]
            for name in names:
                if sum(info.filename == name for info in infos) > 1:  # which copy is meant is anyone's guess
                    raise DataError(f"{label}: {name} appears more than once in the archive")
                _refuse_unless_plain(members[name], f"{label}: {name}")
            for name in names:
                # zipfile never reads past a member's declared size, so the size check above bounds what is written
                with zipped.open(members[name]) as source, open(staging / name, "xb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
    except DataError:
        raise
    except _UNREADABLE_ZIP as err:
        raise DataError(f"{label}: not a readable zip archive ({err})") from None
    return names


def _refuse_unless_plain(info: zipfile.ZipInfo, where: str) -> None:
    """Refuse (:class:`DataError`) a member that is not a plain file of a sensible size, readable without a
    password: a link, a device or a folder must never take the place of a data file."""
    kind = stat.S_IFMT(info.external_attr >> 16)  # the Unix file type, where the archive records one
    if kind and kind != stat.S_IFREG:
        raise DataError(f"{where} is {_NOT_PLAIN.get(kind, 'a special file')}, not a plain file")
    if info.external_attr & _MSDOS_DIRECTORY:
        raise DataError(f"{where} is a directory, not a plain file")
    if info.flag_bits & _ENCRYPTED:
        raise DataError(f"{where} is encrypted (password-protected); the competition's files are not")
    if info.file_size > MAX_MEMBER:
        raise DataError(f"{where} unpacks to {info.file_size:,} bytes, far more than the competition's file")


def _check(staging: Path, name: str, label: str) -> int:
    """Read the unpacked ``name`` as the training or test data; returns its number of digits."""
    path = staging / name
    try:
        return len(read_train(path) if name == "train.csv" else read_test(path))
    except DataError as err:
        # The reader names the unpacked copy, which is about to be removed: name the archive's member instead.
        raise DataError(f"{label}: {name}: {str(err).removeprefix(f'{path}: ')}") from None


def _put_in_place(names: list[str], staging: Path, out: Path) -> list[Path]:
    """Move the checked files from ``staging`` into ``out``, replacing any there."""
    for name in names:  # refused before the first rename, so that none is done unless all can be
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise DataError(f"{out / name}: is a directory; the downloaded {name} cannot take its place")
    for name in names:
        os.replace(staging / name, out / name)
    return [out / name for name in names]


def _remove_stale_staging(out: Path) -> None:
    """Remove the staging folders an unpacking killed before its clean-up (SIGKILL, power loss) left in ``out``:
    only folders named as :func:`tempfile.mkdtemp` names ours and holding nothing but files of the competition's
    names, so that nothing of anyone else's is touched."""
    for folder in out.iterdir():
        if not _STAGING.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        inside = list(folder.iterdir())
        if all(path.name in DATA_FILES and path.is_file() and not path.is_symlink() for path in inside):
            shutil.rmtree(folder, ignore_errors=True)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders made for an unpacking that failed, deepest first, each only if it is still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


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


def download(out: str | Path, api: Any | None = None) -> Unpacked:
    """Download the competition's files and put them into ``out``, checked first and all or nothing (see
    :func:`unpack`)."""
    api = api or connect()  # before anything is created: a failed sign-in leaves no folder behind
    with tempfile.TemporaryDirectory(prefix="digit-recognizer-download-") as folder:
        _call(api.competition_download_files, "downloading", COMPETITION, path=folder, force=True, quiet=True)
        archives = [path for path in sorted(Path(folder).rglob("*")) if path.is_file() and zipfile.is_zipfile(path)]
        if not archives:
            raise KaggleError(f"Kaggle sent no zip archive for '{COMPETITION}'; try again later")
        return unpack(archives[0], out, shown_as=f"Kaggle's {archives[0].name}")


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
