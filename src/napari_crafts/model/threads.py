"""torch's CPU thread count, pinned wherever pixels are computed: same inputs + same seed = same pixels.

On CPU the pixels depend (by a grey level, here and there) on how many threads share a convolution or a
matrix product. ``torch.set_num_threads`` does not set one count for the process: it sets the OpenMP team
size of the *calling* thread, and a process-wide value that threads started later adopt the first time
they run torch; threads already running keep theirs. So once any thread sets it (a dask worker thread, a
test), a napari worker thread started afterwards computes with that count while the main thread keeps
its own, and the widget's result differs from the same call on the main thread.

The cure is to not inherit: every generation call pins the count in the thread it runs in (``pinned``),
to one value per process (``default_threads``: ``OMP_NUM_THREADS`` when set, else the physical cores, as
torch chooses at start), or to the value of an enclosing ``torch_threads(n)`` in that thread (the
whole-slide workers' ``threads_per_worker``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

_DEFAULT: list[int] = []  # the process's count, decided once
#: OMP_NUM_THREADS as the process started (read at import: a dask Nanny later sets it to 1 in *this* process,
#: for the workers it spawns, and torch in this process must not follow).
_STARTUP_OMP = os.environ.get("OMP_NUM_THREADS", "").strip()
_LOCAL = threading.local()  # .threads: an enclosing torch_threads(n) in this thread
T = TypeVar("T")


def default_threads() -> int:
    """The process's torch thread count for pixel math: ``OMP_NUM_THREADS`` as the process started, else the
    physical cores."""
    if not _DEFAULT:
        if _STARTUP_OMP.isdigit() and int(_STARTUP_OMP) > 0:
            n = int(_STARTUP_OMP)
        else:
            import psutil

            n = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        _DEFAULT.append(max(1, n))
    return _DEFAULT[0]


def set_default_threads(n: int) -> None:
    """Set the process's count (e.g. from a setting); every later generation call in every thread uses it."""
    if int(n) < 1:
        raise ValueError(f"torch threads must be at least 1, got {n}.")
    _DEFAULT[:] = [int(n)]


def wanted_threads() -> int:
    """The count for generation in this thread: an enclosing ``torch_threads(n)``, else the process's."""
    return int(getattr(_LOCAL, "threads", 0) or default_threads())


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Generation in this thread uses ``n`` torch threads inside the block (whole-slide workers)."""
    before = getattr(_LOCAL, "threads", 0)
    _LOCAL.threads = int(n)
    try:
        yield
    finally:
        _LOCAL.threads = before


def pin() -> int:
    """Set this thread's torch thread count to ``wanted_threads()`` (cheap when it already is); returns it."""
    import torch

    n = wanted_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def pinned(gen: Generator[Any, Any, T]) -> Generator[Any, Any, T]:
    """``gen``, with the thread count pinned before each of its steps runs (in whichever thread runs it).

    Closing or throwing into the wrapper reaches ``gen`` (a cancelled generation stops at once).
    """
    pin()
    try:
        event = next(gen)
        while True:
            try:
                value = yield event
            except GeneratorExit:
                gen.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to gen, as ``yield from`` would
                pin()
                event = gen.throw(exc)
                continue
            pin()
            event = gen.send(value)
    except StopIteration as stop:
        return stop.value
