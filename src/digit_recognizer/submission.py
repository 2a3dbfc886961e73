"""Kaggle's submission format, in one place: writing a submission, and checking one as the leaderboard would.

A submission is the header ``ImageId,Label`` and one row per test image, ``ImageId`` counted from 1, ``Label`` a
digit 0-9. :func:`check_submission` needs no network, so that a bad file is refused before it spends one of the
day's submissions.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import InputError, SubmissionError
from .files import output_path, read_bounded

HEADER = "ImageId,Label"
TEST_ROWS = 28_000           # Kaggle's test set
MAX_SUBMISSION = 4 << 20     # bytes; a valid submission is about 210 KB
_INTEGER = re.compile(r"[0-9]{1,9}")


def write_submission(labels: np.ndarray, path: str | Path) -> None:
    """One row per test image, in order; ``path`` may be ``-`` (standard output), a link, a device or a pipe
    (:func:`~digit_recognizer.files.output_path`)."""
    rows = np.column_stack([np.arange(1, len(labels) + 1), labels])
    with output_path(path) as tmp:
        np.savetxt(tmp, rows, fmt="%d", delimiter=",", header=HEADER, comments="")


def check_submission(path: str | Path, rows: int = TEST_ROWS) -> None:
    """Refuse (:class:`SubmissionError`) a file the leaderboard would not score: the header ``ImageId,Label``,
    then ``rows`` rows, each ImageId 1 .. ``rows`` exactly once, each Label a digit 0-9."""
    try:
        data = read_bounded(path, MAX_SUBMISSION, f"a submission of {rows:,} rows")
    except InputError as err:
        raise SubmissionError(str(err)) from None
    try:
        text = data.decode("utf-8-sig")
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
