"""Driving our generators: long work yields progress events and *returns* its result (STYLE.md); these run one
to its return value, or pass its events on changed, in one place."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def _into(gen: Generator[Any, None, T], box: list[T]) -> Generator[Any, None, None]:
    box.append((yield from gen))


def run(gen: Generator[Any, None, T], on_event: Callable[[Any], object] | None = None) -> T:
    """Drive ``gen`` to the end (for scripts, tests, the CLI), handing each event to ``on_event``; return its
    return value. If ``on_event`` raises (Ctrl-C, a cancel), ``gen`` is closed at once, so its clean-up runs."""
    box: list[T] = []
    inner = _into(gen, box)
    try:
        for event in inner:
            if on_event is not None:
                on_event(event)
    finally:
        inner.close()
    return box[0]


def mapped(gen: Generator[Any, None, T], fn: Callable[[Any], Any]) -> Generator[Any, None, T]:
    """Yield ``fn(event)`` for each event of ``gen``; return what ``gen`` returns. Closing this closes ``gen``."""
    box: list[T] = []
    inner = _into(gen, box)
    try:
        for event in inner:
            yield fn(event)
    finally:
        inner.close()
    return box[0]
