"""Lazy windows: array-likes read window by window (never whole), and zero-padded window reads.

Slides, GeoJSON nuclei, channel planes, resampled images and control sources all read their data through
these, in level-0 pixels: one :class:`WindowedArray` base gives them numpy's basic slicing, so each subclass
only says how to read one window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class WindowedArray:
    """Base of lazy, picklable array-likes read window by window: ``shape``, ``dtype`` and basic slicing.

    A subclass sets ``shape``, ``dtype`` (and ``path`` when it reads a file, recorded in provenance) and
    implements ``read(y, x, height, width)``: every other axis whole, Y and X the last two axes (…×Y×X), or
    the first two when ``channels_last`` (Y×X×…). Slicing (ints, forward slices, ``...``) becomes one read.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    path: str
    channels_last: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        ay = 0 if self.channels_last else self.ndim - 2
        spans = (_span(k, n) for k, n in zip(key[ay : ay + 2], self.shape[ay : ay + 2], strict=True))
        (y0, y1, ky), (x0, x1, kx) = spans
        window = (*key[:ay], ky, kx, *key[ay + 2 :])
        return self.read(y0, x0, y1 - y0, x1 - x0)[window]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def _span(key: Any, n: int) -> tuple[int, int, Any]:
    """(start, stop, index into the window read) for one spatial key: an int or a forward slice."""
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        if step < 1:
            raise IndexError("Lazy windows support forward slices only.")
        return start, max(start, stop), slice(None, None, step)
    i = int(key) + n if int(key) < 0 else int(key)
    if not 0 <= i < n:
        raise IndexError(f"Index {key} is out of bounds for size {n}.")
    return i, i + 1, 0


def read_padded(data: Any, y: int, x: int, h: int, w: int, *, channels_last: bool = False,
                read: Callable[[Any], np.ndarray] = np.asarray) -> np.ndarray:
    """Window [y, y+h) × [x, x+w) of an array-like, zero where it falls outside; only the inside is read.

    Y and X are the last two axes (…×Y×X), or the first two with ``channels_last`` (Y×X×…). ``read`` turns the
    sliced inside into numpy (e.g. a dask array's synchronous compute).
    """
    ay = 0 if channels_last else data.ndim - 2
    H, W = data.shape[ay], data.shape[ay + 1]
    shape = list(data.shape)
    shape[ay : ay + 2] = [h, w]
    out = np.zeros(shape, dtype=data.dtype)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y1 > y0 and x1 > x0:
        src: list[Any] = [slice(None)] * data.ndim
        dst: list[Any] = [slice(None)] * data.ndim
        src[ay : ay + 2] = [slice(y0, y1), slice(x0, x1)]
        dst[ay : ay + 2] = [slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)]
        out[tuple(dst)] = read(data[tuple(src)])
    return out
