"""Tile grids over a region, blending weights, per-tile seeds and the coordinate-seeded noise field.

Seams are fought twice. (1) The starting noise of every tile is cut from one *noise field* defined on the
whole slide's latent grid, seeded by the global seed and the block's slide coordinates: two overlapping tiles
start from identical noise where they overlap, and a tile re-run alone gets the same noise. (2) Overlaps are
blended with complementary linear ramps, so the weights of neighbours sum to one everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: Side of the noise field's seeding blocks, in latent pixels.
NOISE_BLOCK = 16


@dataclass(frozen=True)
class Tile:
    """One tile: grid position (row, col) and pixel box (y, x, size) in region coordinates."""

    row: int
    col: int
    y: int
    x: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.y, self.x, self.y + self.size, self.x + self.size


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of ``tile`` px overlapping by ``overlap`` px, anchored at (0, 0) of a height×width region.

    The last row/column may reach past the region; that part is padded by the reader and cropped on writing.
    """

    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"Region is empty ({self.height}×{self.width} px).")
        if self.tile <= 0:
            raise ValueError(f"Tile size must be positive, got {self.tile}.")
        if not 0 <= self.overlap <= self.tile // 2:
            raise ValueError(f"Overlap must be between 0 and half the tile ({self.tile // 2} px), got {self.overlap}.")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def rows(self) -> int:
        return _count(self.height, self.tile, self.stride)

    @property
    def cols(self) -> int:
        return _count(self.width, self.tile, self.stride)

    def __len__(self) -> int:
        return self.rows * self.cols

    def at(self, row: int, col: int) -> Tile:
        """Tile (row, col); equal to ``tiles[row * cols + col]``."""
        return Tile(row, col, row * self.stride, col * self.stride, self.tile)

    @cached_property
    def tiles(self) -> tuple[Tile, ...]:
        return tuple(self.at(r, c) for r in range(self.rows) for c in range(self.cols))

    def weights(self, tile: Tile) -> np.ndarray:
        """Blending weights (size, size) float32: ramps only on sides that have a neighbour."""
        wy = _ramp(self.tile, self.overlap, tile.row > 0, tile.row < self.rows - 1)
        wx = _ramp(self.tile, self.overlap, tile.col > 0, tile.col < self.cols - 1)
        return np.outer(wy, wx)

    def tiles_touching(self, y0: int, x0: int, y1: int, x1: int) -> list[Tile]:
        """Tiles whose box intersects [y0, y1) × [x0, x1), in grid order (by arithmetic: cheap on whole slides)."""
        s, t = self.stride, self.tile
        rows = range(max(0, (y0 - t) // s + 1), min(self.rows - 1, (y1 - 1) // s) + 1)
        cols = range(max(0, (x0 - t) // s + 1), min(self.cols - 1, (x1 - 1) // s) + 1)
        return [self.at(r, c) for r in rows for c in cols]


def _count(length: int, tile: int, stride: int) -> int:
    return 1 if length <= tile else 1 + -(-(length - tile) // stride)


def _ramp(size: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    w = np.ones(size, dtype=np.float32)
    if overlap:
        up = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if before:
            w[:overlap] = up
        if after:
            w[size - overlap :] = up[::-1]
    return w


class Stitcher:
    """Weighted sum of tiles over a window of a region; any box reads as the blend of the tiles added so far.

    ``origin``: where the window starts in region pixels (a whole-slide chunk, a live edit's box); boxes given to
    ``add`` and ``read`` are in window pixels.
    """

    def __init__(self, height: int, width: int, channels: int = 3, origin: tuple[int, int] = (0, 0)) -> None:
        self.acc = np.zeros((height, width, channels), dtype=np.float32)
        self.wsum = np.zeros((height, width), dtype=np.float32)
        self.origin = origin

    def add_tile(self, tile: Tile, image: np.ndarray, weights: np.ndarray) -> tuple[int, int, int, int]:
        """Add the part of ``tile`` (its ``image`` and ``weights``, tile-sized) inside the window; returns the box
        written, in window pixels (empty when the tile misses the window)."""
        (oy, ox), (h, w) = self.origin, self.wsum.shape
        ty0, tx0 = max(oy - tile.y, 0), max(ox - tile.x, 0)
        ty1, tx1 = min(oy + h - tile.y, tile.size), min(ox + w - tile.x, tile.size)
        if ty1 <= ty0 or tx1 <= tx0:
            return 0, 0, 0, 0
        return self.add(tile.y + ty0 - oy, tile.x + tx0 - ox, image[ty0:ty1, tx0:tx1], weights[ty0:ty1, tx0:tx1])

    def add(self, y: int, x: int, image: np.ndarray, weights: np.ndarray) -> tuple[int, int, int, int]:
        """Add ``image`` (h, w, C) with ``weights`` (h, w) at (y, x); returns the box written, clipped."""
        h, w = self.wsum.shape
        y1, x1 = min(y + image.shape[0], h), min(x + image.shape[1], w)
        ih, iw = y1 - y, x1 - x
        wt = weights[:ih, :iw]
        self.acc[y:y1, x:x1] += image[:ih, :iw].astype(np.float32) * wt[..., None]
        self.wsum[y:y1, x:x1] += wt
        return y, x, y1, x1

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """The blended box as uint8; pixels no tile has reached yet are 0."""
        wsum = self.wsum[y0:y1, x0:x1, None]
        out = np.divide(self.acc[y0:y1, x0:x1], wsum, out=np.zeros_like(self.acc[y0:y1, x0:x1]), where=wsum > 0)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def blend_order(tiles: Iterable[Tile], glass: Container[Tile]) -> list[Tile]:
    """The one order tiles are blended in: glass (no tissue) first, then the model's tiles, each in grid order.

    Float sums depend on their order, so a region, a whole-slide chunk and a live edit that blend in this order
    (``blend_window``) give the same bytes for the same pixels.
    """
    tiles = list(tiles)
    return [t for t in tiles if t in glass] + [t for t in tiles if t not in glass]


def blend_window(grid: TileGrid, box: tuple[int, int, int, int], tiles: Iterable[Tile],
                 image_of: Callable[[Tile], np.ndarray]) -> np.ndarray:
    """The blend (uint8) over ``box`` (y0, x0, y1, x1; region pixels) of ``tiles`` in the order given (see
    ``blend_order``), each tile's pixels from ``image_of(tile)``."""
    y0, x0, y1, x1 = box
    stitcher = Stitcher(y1 - y0, x1 - x0, origin=(y0, x0))
    for tile in tiles:
        stitcher.add_tile(tile, image_of(tile), grid.weights(tile))
    return stitcher.read(0, 0, y1 - y0, x1 - x0)


def tile_seed(seed: int, y: int, x: int) -> int:
    """A 63-bit seed for the tile (or noise block) at slide coordinates (y, x) under the global ``seed``."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, y + 2**31, x + 2**31])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


def noise_field(seed: int, ly: int, lx: int, height: int, width: int, channels: int = 4) -> np.ndarray:
    """Standard-normal noise (channels, height, width) float32 at latent coordinates (ly, lx) of the slide.

    Each NOISE_BLOCK² block is drawn from its own generator seeded by (seed, block coordinates), so any
    window of the field is the same whichever tile asks for it, on any machine and device.
    """
    out = np.empty((channels, height, width), dtype=np.float32)
    b = NOISE_BLOCK
    for by in range(ly // b, -(-(ly + height) // b)):
        for bx in range(lx // b, -(-(lx + width) // b)):
            block = np.random.Generator(np.random.Philox(tile_seed(seed, by, bx))).standard_normal(
                (channels, b, b), dtype=np.float32
            )
            y0, x0 = max(by * b, ly), max(bx * b, lx)
            y1, x1 = min((by + 1) * b, ly + height), min((bx + 1) * b, lx + width)
            oy, ox = by * b, bx * b
            out[:, y0 - ly : y1 - ly, x0 - lx : x1 - lx] = block[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out


def seam_score(rgb: np.ndarray, grid: TileGrid) -> tuple[float, float]:
    """(border, interior): mean absolute step between adjacent rows/columns at tile edges vs inside tile cores.

    A tile edge is where a tile's contribution starts or stops inside the region; a tile core is where one
    tile alone covers both pixels (no blending). A visible seam makes ``border`` exceed ``interior`` (the
    image's own texture); a seam-free mosaic has border/interior ≈ 1.
    """
    img = np.asarray(rgb, dtype=np.float32)
    border: list[np.ndarray] = []
    interior: list[np.ndarray] = []
    for axis, length in ((0, grid.height), (1, grid.width)):
        starts = sorted({t.y if axis == 0 else t.x for t in grid.tiles})
        cover = np.zeros(length + grid.tile, dtype=int)
        for s0 in starts:
            cover[s0 : s0 + grid.tile] += 1
        edges = ({s0 for s0 in starts if s0 > 0} | {s0 + grid.tile for s0 in starts}) & set(range(1, length))
        steps = np.abs(np.diff(img, axis=axis)).mean(axis=tuple(a for a in range(img.ndim) if a != axis))
        for i in range(1, length):  # steps[i - 1] is the step between pixel i-1 and pixel i
            if i in edges:
                border.append(steps[i - 1])
            elif cover[i - 1] == 1 and cover[i] == 1:
                interior.append(steps[i - 1])
    return (float(np.mean(border)) if border else float("nan"), float(np.mean(interior)) if interior else float("nan"))
