"""Stop a denoising step part-way: a cancel flag checked before every block of the networks.

``Engine.generate`` yields after each step, so stopping its generator stops within a step; one step of a large
tile on a CPU can take minutes, though. ``make_interruptible`` puts a forward pre-hook on every block (a module
with children: ResNet blocks, attention blocks, transformer layers…) of the given networks; inside
``cancel_scope(event)`` that hook raises :class:`JobCancelled` in the thread that runs the scope as soon as
``event`` is set. Other threads, and code outside a scope, are unaffected (the hook is a dict lookup).
torch is not imported here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_HOOKED = "_napari_crafts_interruptible"
_SCOPES: dict[int, threading.Event] = {}


class JobCancelled(Exception):
    """The user cancelled the job (not a RuntimeError: superqt's workers would swallow it)."""


def _check(module: Any, args: Any) -> None:
    event = _SCOPES.get(threading.get_ident())
    if event is not None and event.is_set():
        raise JobCancelled("cancelled")


def make_interruptible(*networks: Any) -> None:
    """Hook every block of ``networks`` (torch modules; None is skipped) once; compiled modules are left alone."""
    for net in networks:
        if net is None or getattr(net, _HOOKED, False) or hasattr(net, "_orig_mod"):
            continue
        for module in net.modules():
            if next(module.children(), None) is not None:
                module.register_forward_pre_hook(_check)
        setattr(net, _HOOKED, True)


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[None]:
    """Within this block, hooked networks raise JobCancelled in this thread once ``event`` is set."""
    ident = threading.get_ident()
    _SCOPES[ident] = event
    try:
        yield
    finally:
        _SCOPES.pop(ident, None)


def current_cancel() -> threading.Event | None:
    """The event of the ``cancel_scope`` this thread runs in (None outside one): the job's one cancel channel."""
    return _SCOPES.get(threading.get_ident())


def check(event: threading.Event | None) -> None:
    """Raise JobCancelled if ``event`` is set (for loops between network calls)."""
    if event is not None and event.is_set():
        raise JobCancelled("cancelled")
