"""Invariant checks that stay on under ``python -O``."""

from __future__ import annotations


class InvariantError(RuntimeError):
    """An internal invariant did not hold: a bug, never a user input problem."""


def ensure(condition: bool, message: str) -> None:
    """Raise :class:`InvariantError` when ``condition`` is false (unlike ``assert``, always on)."""
    if not condition:
        raise InvariantError(message)
