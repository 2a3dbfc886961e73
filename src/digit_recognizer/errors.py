"""Errors that end a command with a message rather than a traceback, importable without torch."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: nothing trained from here on would be worth saving (exit code 1)."""
