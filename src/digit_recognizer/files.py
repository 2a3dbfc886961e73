"""Atomic output files: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


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


def check_writable(path: str | Path, directory: bool = False) -> None:
    """Prove, before any work, that ``path`` can be written: a file (``directory=False``) or a directory to
    write into. Leaves no trace: folders created for the test are removed again. Raises ValueError naming the
    path and the fault."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise ValueError(f"{path}: is a directory; give a file name")
    folder = path if directory else path.parent
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{path}: cannot write there ({existing} is a file, not a directory)")
    try:
        with atomic_path(folder / ".write-test") as tmp:
            tmp.write_bytes(b"")
        (folder / ".write-test").unlink()
    except OSError as err:
        raise ValueError(f"{path}: cannot write there ({err.strerror or err})") from None
    finally:
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


def write_json(data: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
