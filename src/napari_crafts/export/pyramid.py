"""Pyramid geometry shared by the OME-Zarr and TIFF writers: how many levels, their shapes, and the 2×2 mean.

Level l is level l-1 reduced by a 2×2 area mean (pixels past an odd edge are left out of the mean, rounded
half up), so each side halves, rounding up.
"""

from __future__ import annotations

import numpy as np

DOWNSAMPLING = "2x2 area mean of the previous level, pixels past odd edges left out, rounded half up"


def default_levels(shape_yx: tuple[int, int], chunk: int) -> int:
    """Number of levels: halve until the largest side is smaller than ``chunk`` (at least 1)."""
    n, side = 1, max(shape_yx)
    while side >= chunk:
        side, n = -(-side // 2), n + 1
    return n


def level_shapes(shape_yx: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """(Y, X) of each level; odd sides round up."""
    return [(-(-shape_yx[0] // 2**lv), -(-shape_yx[1] // 2**lv)) for lv in range(levels)]


def mean_downsample_2x(block: np.ndarray) -> np.ndarray:
    """2×2 area mean over the first two axes of a uint8 (h, w, ...) block; odd edges average what exists."""
    h, w = block.shape[:2]
    if h % 2 or w % 2:  # edge replication == mean of the pixels that exist
        block = np.pad(block, [(0, h % 2), (0, w % 2)] + [(0, 0)] * (block.ndim - 2), mode="edge")
    h2, w2 = block.shape[0] // 2, block.shape[1] // 2
    s = block.reshape(h2, 2, w2, 2, *block.shape[2:]).sum(axis=(1, 3), dtype=np.uint16)
    return ((s + 2) // 4).astype(np.uint8)
