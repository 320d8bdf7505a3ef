"""Errors as one line: what a log line, an MLflow tag or a terminal shows."""

from __future__ import annotations


def error_line(e: BaseException) -> str:
    """An error as one line: its type, then its message's first line."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
