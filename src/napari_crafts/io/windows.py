"""Lazy windows: array-likes read window by window (never whole), and zero-padded window reads.

Slides, GeoJSON nuclei and control sources all read their data through these, in level-0 pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class WindowedArray:
    """Base of lazy, picklable array-likes read window by window: ``shape``, ``dtype`` and basic slicing.

    A subclass sets ``shape``, ``dtype`` and ``path`` (the file it reads, recorded in provenance) and implements
    ``read(y, x, height, width)`` over the last two axes; slicing (ints, forward slices, ``...``) becomes one read.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    path: str

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
        (y0, y1, ky), (x0, x1, kx) = (_span(k, n) for k, n in zip(key[-2:], self.shape[-2:], strict=True))
        window = (*key[:-2], ky, kx)
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


def read_padded(data: Any, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Window [y, y+h) × [x, x+w) of a 2-D (or …×Y×X) array-like, zero where it falls outside."""
    H, W = data.shape[-2:]
    out = np.zeros((*data.shape[:-2], h, w), dtype=data.dtype)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y1 > y0 and x1 > x0:
        out[..., y0 - y : y1 - y, x0 - x : x1 - x] = np.asarray(data[..., y0:y1, x0:x1])
    return out
