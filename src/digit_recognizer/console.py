"""What the commands show while they work: progress bars only on a terminal, durations in a few characters."""

from __future__ import annotations

import sys


def show_bars() -> bool:
    """Progress bars only on a terminal: redirected to a file they would fill it with control codes."""
    return sys.stderr.isatty()


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
