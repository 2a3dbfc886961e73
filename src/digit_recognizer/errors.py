"""Errors that end a command with a message rather than a traceback, importable without torch."""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be used: a user's file, value or path, or a file the project wrote and reads back. The
    message names the file (or setting) and the fault; the command ends with exit code 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: nothing trained from here on would be worth saving (exit code 1)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty line, cut to ``limit`` characters (its type's name when it has no text)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(err).__name__
