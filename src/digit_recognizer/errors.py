"""Every error class of the package, and how a message is cut to one line. Importable without torch.

A command ends with exit code 2 and one line for :class:`InputError` (and its kinds), :class:`UsageError` and
:class:`KaggleError`; with exit code 1 for :class:`TrainingDiverged`. The web API answers :class:`BadRequest`
with its status and ``{"error": ...}``.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be used: a user's file, value or path, or a file the project wrote and reads back. The
    message names the file (or setting) and the fault."""


class DataError(InputError):
    """Data that cannot be used. The message names the file, the line or column, and the fault."""


class SubmissionError(DataError):
    """A submission file the leaderboard would refuse; the message names the file, the line and the fault."""


class RunDirError(InputError):
    """A run directory, or a model directory, that cannot be used; the message names the file and the fault."""


class ImageError(InputError):
    """An image that cannot be turned into a digit; the message says why."""


class NoDigitError(ImageError):
    """An image that was read but holds no digit (blank, or a few specks); the message says which."""


class UsageError(Exception):
    """A command-line mistake: a flag or combination of flags that cannot work."""


class KaggleError(Exception):
    """The Kaggle API cannot be used or answered with an error; the message says what to do."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: nothing trained from here on would be worth saving."""


class BadRequest(Exception):
    """A request the web API refuses: its HTTP status and what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first meaningful line, cut to ``limit`` characters (its type's name when it has no text).
    A heading line such as torch's "Error(s) in loading state_dict for X:" gives way to the line after it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return lines[0][:limit] if lines else type(err).__name__
