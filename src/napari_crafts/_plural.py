"""Counts in messages: "1 tile", "2 tiles" (one helper for every command and widget)."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and ``noun``, or ``nouns`` (default: ``noun`` + "s") when ``n`` is not 1; thousands separated."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"
