"""Files in and out: outputs written atomically (a reader sees the old file or the whole new one, never half of
it), and inputs read with bounds (regular files of a sensible size only: never a device, a pipe or a file that
would fill the memory).

Every fault is an :class:`~digit_recognizer.errors.InputError` naming the path and the fault.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

# A temporary file of atomic_path: ".<name>." + 8 random characters (tempfile's) + ".tmp", beside <name>.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
STDOUT = "-"  # an output path that means standard output


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def temporaries_of(path: Path) -> list[Path]:
    """The temporary files an interrupted :func:`atomic_path` may have left beside ``path``."""
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir()
            if (m := _TEMPORARY.fullmatch(p.name)) and m["name"] == path.name and not p.is_dir()]


@contextlib.contextmanager
def output_path(path: str | Path) -> Iterator[Path]:
    """Yield a path to write a user's output to; when the block succeeds, the output lands at ``path``:

    - ``-``: standard output;
    - a symbolic link: written through to its target (the link stays a link);
    - a device or a pipe (``/dev/stdout``, a FIFO): written to as a stream;
    - anything else: replaced atomically (:func:`atomic_path`).

    A write that fails (a full disk, ``/dev/full``) raises :class:`InputError` naming the path.
    """
    stream = str(path) == STDOUT or _is_stream(path)
    try:
        if not stream:
            with atomic_path(os.path.realpath(path)) as tmp:
                yield tmp
            return
        with tempfile.TemporaryDirectory(prefix="digit-recognizer-") as folder:
            tmp = Path(folder) / "output"
            yield tmp
            with open(tmp, "rb") as source:
                if str(path) == STDOUT:
                    sys.stdout.flush()
                    shutil.copyfileobj(source, sys.stdout.buffer)
                    sys.stdout.buffer.flush()
                else:
                    with open(path, "wb") as target:
                        shutil.copyfileobj(source, target)
    except OSError as err:
        raise InputError(f"{path}: cannot write ({err.strerror or err})") from None


def _is_stream(path: str | Path) -> bool:
    """Whether ``path`` (through its links) is something other than a regular file or a directory: a device or a
    pipe, written to as a stream rather than replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_writable(path: str | Path, directory: bool = False) -> None:
    """Prove, before any work, that ``path`` can be written: a file (``directory=False``) or a directory to
    write into. Leaves no trace: folders created for the test are removed again. Raises InputError naming the
    path and the fault."""
    check_path(path)
    if str(path) == STDOUT and not directory:
        return
    path = Path(path)
    try:
        if not directory and _is_stream(path):
            if not os.access(path, os.W_OK):
                raise InputError(f"{path}: cannot write there (permission denied)")
            return
        if not directory and path.is_symlink():
            path = Path(os.path.realpath(path))  # written through to its target
        if directory and path.exists() and not path.is_dir():
            raise InputError(f"{path}: exists and is not a directory")
        if not directory and path.is_dir():
            raise InputError(f"{path}: is a directory; give a file name")
        folder = path if directory else path.parent
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        existing = next(p for p in (folder, *folder.parents) if p.exists())
    except OSError as err:  # a name longer than the file system allows, say
        raise InputError(f"{path}: cannot use this path ({err.strerror or err})") from None
    if not existing.is_dir():
        raise InputError(f"{path}: cannot write there ({existing} is a file, not a directory)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".digit-recognizer-write-test-")  # a name no one else uses
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise InputError(f"{path}: cannot write there ({err.strerror or err})") from None
    finally:
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


def check_path(path: str | Path) -> None:
    """Refuse a path the project could not name in its records and messages: one that is not valid UTF-8 (bytes
    the file system accepts but text cannot hold), or whose parts are longer than the file system allows."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(f"{shown}: the path is not valid UTF-8; rename it") from None
    for part in Path(text).parts:
        if len(part.encode()) > 255:
            raise InputError(f"{text[:80]}...: a name in the path is {len(part.encode())} bytes long; "
                             "the file system allows 255")


def read_bounded(path: str | Path, limit: int, what: str = "such a file", follow_links: bool = True) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes; anything else (missing, a
    directory, a device such as ``/dev/zero``, a FIFO, a larger file, and a symbolic link unless
    ``follow_links``) is refused with InputError naming the path. ``what`` names the file in the size message."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)  # a FIFO opens without a writer
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"{path}: a symbolic link; refusing to follow it") from None
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    mode = os.fstat(fd)
    if not stat.S_ISREG(mode.st_mode) or mode.st_size > limit:
        os.close(fd)
        if stat.S_ISDIR(mode.st_mode):
            raise InputError(f"{path}: a directory, not a file")
        if not stat.S_ISREG(mode.st_mode):
            raise InputError(f"{path}: not a regular file (a device or a pipe?)")
        raise InputError(f"{path}: {mode.st_size:,} bytes is far more than {what} holds (at most {limit:,})")
    chunks, size = [], 0
    with os.fdopen(fd, "rb") as handle:
        try:
            while chunk := handle.read(1 << 20):
                size += len(chunk)
                if size > limit:  # grew while being read
                    raise InputError(f"{path}: more than {limit:,} bytes, far more than {what} holds")
                chunks.append(chunk)
        except OSError as err:
            raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    data = b"".join(chunks)
    return data


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file (through links too); a path that does not exist names no file yet,
    but can still be the other's spelling."""
    if str(a) == STDOUT or str(b) == STDOUT:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def write_json(data: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
