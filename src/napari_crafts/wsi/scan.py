"""The empty-tile scan of a whole-slide run: which tiles hold no nuclei (or no signal), reading little.

A tile is empty when ``source.is_empty`` says so (``generate_region``'s rule); the scan finds the same
answer for every tile of the grid without asking each tile:

1. Occupancy. Level 0 is read once, block by block, and reduced to a coarse grid of cells (True: a nucleus
   pixel in the cell). Blocks are the file's own chunks; chunks the file does not store (a zarr store's
   missing chunks, a TIFF's empty tiles) read as 0 and are never read. GeoJSON nuclei need no reading at all:
   the polygons' bounding boxes mark the cells that may hold a nucleus.
2. Tiles. A tile touching no occupied cell is empty. When the cell side divides the grid's stride and tile
   size, cells tile the grid exactly and a tile touching an occupied cell holds a nucleus; otherwise (or for
   bounding boxes) such a tile is checked with ``source.is_empty`` like today.

A labels pyramid level cannot replace level 0 here: a level made by subsampling (the usual way for labels)
drops nuclei smaller than its step, so emptiness there proves nothing; the store's chunk index gives the
same saving exactly. Fluorescence sources (a tile is empty below per-channel limits) are checked tile by tile.

The work is cut into tasks and handed to ``run_tasks(name, fn, groups)`` (dask.distributed in ``wsi.job``,
a plain loop in tests), which returns ``fn(group)`` for every group, in order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..io.windows import read_padded

#: Fewest source pixels per occupancy cell (smaller cells cost memory and gain little).
MIN_CELL = 64
#: Most occupancy cells (a 200,000² slide at 64 px: 9.8 M cells).
MAX_CELLS = 2**26
#: Side of the blocks read when the file does not tell its chunks.
BLOCK = 2048
#: Level-0 pixels read per occupancy task; tiles checked per tile task.
PIXELS_PER_TASK = 64 * 2**20
TILES_PER_TASK = 256

RunTasks = Callable[[str, Callable[[Any], Any], Sequence[Any]], list[Any]]


@dataclass(frozen=True)
class Occupancy:
    """How level 0 is read for the scan: ``blocks`` (y, x, h, w) in level-0 px, reduced to ``cell``-px cells
    from the region's origin; ``exact`` when cells tile the grid exactly; ``skipped`` chunks never read."""

    cell: int
    exact: bool
    shape: tuple[int, int]  # cells (rows, cols) over the region
    blocks: list[tuple[int, int, int, int]]
    skipped: int = 0
    how: str = ""


def scan_empty(source: Any, plan: Any, run_tasks: RunTasks) -> np.ndarray:
    """(rows, cols) True where ``source.is_empty`` holds for the tile of ``plan.grid``, reading little."""
    grid = plan.grid
    boxes = _geojson_boxes(source)
    occ_plan = None if source.mode != "labels" else plan_occupancy(source, plan, boxes is not None)
    if occ_plan is None:  # fluorescence: tile by tile
        every = [(r, c) for r in range(grid.rows) for c in range(grid.cols)]
        return ~_check_tiles(source, plan, every, run_tasks).reshape(grid.rows, grid.cols)
    if boxes is not None:
        occupied = boxes_occupancy(boxes, occ_plan, plan.region.box[:2])
    else:
        occupied = np.zeros(occ_plan.shape, dtype=bool)
        groups = _group_blocks(occ_plan.blocks)
        task = partial(occupancy_task, source, occ_plan.cell, plan.region.box[:2])
        for parts in run_tasks("scan", task, groups):
            for cy, cx, occ in parts:
                occupied[cy : cy + occ.shape[0], cx : cx + occ.shape[1]] |= occ
    maybe = tiles_touching(occupied, grid, occ_plan.cell)
    if occ_plan.exact:
        return ~maybe
    empty = ~maybe
    cells = [(int(r), int(c)) for r, c in np.argwhere(maybe)]
    if cells:
        found = _check_tiles(source, plan, cells, run_tasks)
        rows, cols = np.array(cells).T
        empty[rows, cols] = ~found
    return empty


def _check_tiles(source: Any, plan: Any, cells: list[tuple[int, int]], run_tasks: RunTasks) -> np.ndarray:
    """True per (row, col) in ``cells`` where the tile holds something (``source.is_empty`` is False)."""
    groups = [cells[i : i + TILES_PER_TASK] for i in range(0, len(cells), TILES_PER_TASK)]
    parts = run_tasks("tiles", partial(tiles_task, source, plan), groups)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def tiles_task(source: Any, plan: Any, cells: list[tuple[int, int]]) -> np.ndarray:
    """True per tile (row, col) that holds nuclei / signal (a worker task)."""
    g, (y, x) = plan.grid, plan.region.box[:2]
    return np.array([not source.is_empty(y + r * g.stride, x + c * g.stride, g.tile) for r, c in cells], dtype=bool)


# --------------------------------------------------------------------------------------------- occupancy


def choose_cell(grid: Any, region_shape: tuple[int, int]) -> tuple[int, bool]:
    """(cell side, exact): the grid's own step when it is coarse enough (exact), else a power of two ≥ MIN_CELL."""
    step = math.gcd(grid.tile, grid.stride)
    n_cells = math.ceil(region_shape[0] / step) * math.ceil(region_shape[1] / step)
    if step >= MIN_CELL and n_cells <= MAX_CELLS:
        return step, True
    cell = MIN_CELL
    while math.ceil(region_shape[0] / cell) * math.ceil(region_shape[1] / cell) > MAX_CELLS:
        cell *= 2
    return cell, step % cell == 0


def plan_occupancy(source: Any, plan: Any, from_boxes: bool = False) -> Occupancy:
    """Which blocks of level 0 to read, and the cells they are reduced to."""
    y0, x0, y1, x1 = plan.region.box
    cell, exact = choose_cell(plan.grid, (y1 - y0, x1 - x0))
    shape = (math.ceil((y1 - y0) / cell), math.ceil((x1 - x0) / cell))
    if from_boxes:
        return Occupancy(cell, False, shape, [], how="the nuclei's bounding boxes")
    index = stored_chunks(getattr(source, "data", None))
    if index is None:
        (ch, cw), stored, how = (BLOCK, BLOCK), None, f"level 0 in {BLOCK}-px blocks"
    else:
        (ch, cw), stored = index
        how = f"the {int(stored.sum())} stored {ch}×{cw}-px chunks of level 0"
    blocks, skipped = [], 0
    for cy in range(y0 // ch, math.ceil(y1 / ch)):
        for cx in range(x0 // cw, math.ceil(x1 / cw)):
            if stored is not None and not (cy < stored.shape[0] and cx < stored.shape[1] and stored[cy, cx]):
                skipped += 1
                continue
            by, bx = max(cy * ch, y0), max(cx * cw, x0)
            blocks.append((by, bx, min((cy + 1) * ch, y1) - by, min((cx + 1) * cw, x1) - bx))
    return Occupancy(cell, exact, shape, blocks, skipped, how)


def occupancy_task(source: Any, cell: int, origin: tuple[int, int],
                   blocks: list[tuple[int, int, int, int]]) -> list[tuple[int, int, np.ndarray]]:
    """Per block: (first cell row, first cell col, cells holding a non-zero pixel) (a worker task)."""
    out = []
    with level0_reader(source.data) as read:
        for y, x, h, w in blocks:
            out.extend(_occupied_cells(read(y, x, h, w) != 0, y - origin[0], x - origin[1], cell))
    return out


@contextmanager
def level0_reader(data: Any) -> Iterator[Callable[[int, int, int, int], np.ndarray]]:
    """A reader of windows inside level 0: straight from the file's zarr array when it is a local OME-Zarr or
    a TIFF (a dask read of one window of a whole slide's lazy array costs ~50 ms of graph work, more than the
    chunk itself), else through the source's own array. The same pixels either way."""
    ref = getattr(data, "ref", None)
    store: Any = None
    arr: Any = None
    if ref is not None and getattr(ref, "level", None) == 0:
        try:
            arr, store = _open_level0(Path(ref.path))
        except (OSError, ValueError, KeyError, IndexError, TypeError):  # unusual layout: the generic reader
            arr = None
    try:
        if arr is None or tuple(arr.shape[-2:]) != tuple(data.shape[-2:]) or any(n != 1 for n in arr.shape[:-2]):
            yield lambda y, x, h, w: read_padded(data, y, x, h, w)
        else:
            level0, lead = arr, (0,) * (len(arr.shape) - 2)
            yield lambda y, x, h, w: np.asarray(level0[lead + (slice(y, y + h), slice(x, x + w))])
    finally:
        if store is not None:
            store.close()


def _open_level0(path: Path) -> tuple[Any, Any]:
    """(level-0 zarr array, store to close or None) of a local OME-Zarr store or a TIFF."""
    import zarr

    if path.is_dir():
        group = zarr.open_group(path, mode="r")
        attrs: dict[str, Any] = group.attrs.asdict()  # JSON
        meta: dict[str, Any] = attrs.get("ome", attrs)
        return group[str(meta["multiscales"][0]["datasets"][0]["path"])], None
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None, None
    import tifffile

    store = tifffile.imread(path, aszarr=True)
    node = zarr.open(store, mode="r")
    return (node["0"] if isinstance(node, zarr.Group) else node), store


def _occupied_cells(mask: np.ndarray, ry: int, rx: int, cell: int) -> list[tuple[int, int, np.ndarray]]:
    """The cells (from the region's origin) a block's non-zero pixels fall in: [] or [(row, col, cells)]."""
    if not mask.any():
        return []
    h, w = mask.shape
    iy, ix = _cell_starts(ry, h, cell), _cell_starts(rx, w, cell)
    occ = np.logical_or.reduceat(np.logical_or.reduceat(mask, iy, axis=0), ix, axis=1)
    return [(ry // cell, rx // cell, occ)]


def _cell_starts(start: int, size: int, cell: int) -> np.ndarray:
    """Offsets in a block [start, start+size) where a new cell begins (the block's first pixel included)."""
    first = -(-start // cell) * cell
    return np.unique(np.r_[0, np.arange(first, start + size, cell) - start]).astype(np.intp)


def _group_blocks(blocks: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
    groups: list[list[tuple[int, int, int, int]]] = [[]]
    pixels = 0
    for b in blocks:
        if groups[-1] and pixels + b[2] * b[3] > PIXELS_PER_TASK:
            groups.append([])
            pixels = 0
        groups[-1].append(b)
        pixels += b[2] * b[3]
    return [g for g in groups if g]


def boxes_occupancy(boxes: np.ndarray, occ: Occupancy, origin: tuple[int, int]) -> np.ndarray:
    """Cells touched by any (y0, x0, y1, x1) box (exclusive ends, level-0 px): where nuclei may be."""
    out = np.zeros(occ.shape, dtype=bool)
    if len(boxes) == 0:
        return out
    b = np.asarray(boxes, dtype=np.int64) - np.array([origin[0], origin[1], origin[0], origin[1]])
    b = np.maximum(b, 0)
    cy0, cx0 = b[:, 0] // occ.cell, b[:, 1] // occ.cell
    cy1, cx1 = np.minimum(-(-b[:, 2] // occ.cell), occ.shape[0]), np.minimum(-(-b[:, 3] // occ.cell), occ.shape[1])
    diff = np.zeros((occ.shape[0] + 1, occ.shape[1] + 1), dtype=np.int64)  # 2-D difference array of the boxes
    keep = (cy1 > cy0) & (cx1 > cx0)
    for ys, xs, sign in ((cy0, cx0, 1), (cy0, cx1, -1), (cy1, cx0, -1), (cy1, cx1, 1)):
        np.add.at(diff, (ys[keep], xs[keep]), sign)
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:-1, :-1] > 0


def tiles_touching(occupied: np.ndarray, grid: Any, cell: int) -> np.ndarray:
    """(rows, cols) True where a tile's box meets an occupied cell."""
    def spans(n: int, extent_cells: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(n) * grid.stride
        return start // cell, np.minimum(-(-(start + grid.tile) // cell), extent_cells)

    (ya, yb), (xa, xb) = spans(grid.rows, occupied.shape[0]), spans(grid.cols, occupied.shape[1])
    rows = np.vstack([np.zeros((1, occupied.shape[1]), np.int64), np.cumsum(occupied, axis=0, dtype=np.int64)])
    per_row = (rows[yb] - rows[ya]) > 0  # (tile rows, cell cols): an occupied cell in the tile row's band
    cols = np.hstack([np.zeros((grid.rows, 1), np.int64), np.cumsum(per_row, axis=1, dtype=np.int64)])
    return (cols[:, xb] - cols[:, xa]) > 0


# --------------------------------------------------------------------------------------------- chunk indexes


def stored_chunks(data: Any) -> tuple[tuple[int, int], np.ndarray] | None:
    """((chunk h, chunk w), (rows, cols) True where a chunk is stored) of a level-0 labels file whose missing
    chunks read as 0: a local OME-Zarr store, or a tiled/stripped TIFF. None when unknown."""
    ref = getattr(data, "ref", None)
    if ref is None or getattr(ref, "level", None) != 0:
        return None
    path = Path(ref.path)
    try:
        if path.is_dir():
            return _zarr_chunks(path)
        if path.suffix.lower() in (".tif", ".tiff"):
            return _tiff_chunks(path)
    except (OSError, ValueError, KeyError, IndexError, TypeError):  # unusual layout: read every block instead
        return None
    return None


def _zarr_chunks(path: Path) -> tuple[tuple[int, int], np.ndarray] | None:
    import zarr

    group = zarr.open_group(path, mode="r")
    attrs: dict[str, Any] = group.attrs.asdict()  # JSON
    meta: dict[str, Any] = attrs.get("ome", attrs)
    name = str(meta["multiscales"][0]["datasets"][0]["path"])
    arr = group[name]
    if not isinstance(arr, zarr.Array) or (arr.fill_value or 0) != 0:
        return None
    shape, chunks = arr.shape, arr.shards or arr.chunks  # a missing shard is a missing set of chunks
    if len(shape) < 2 or any(n != 1 for n in shape[:-2]):
        return None
    grid = tuple(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))
    stored = np.zeros(grid[-2:], dtype=bool)
    root = path / name
    encoding = getattr(arr.metadata, "chunk_key_encoding", None)  # zarr v3 only
    default_key = encoding is not None and getattr(encoding, "name", "default") == "default"
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        prefix = [] if rel == "." else rel.split(os.sep)
        for f in files:
            parts = prefix + [f]
            key = ".".join(parts).split(".")
            if default_key:
                if key[0] != "c":
                    continue
                key = key[1:]
            if len(key) == len(shape) and all(k.isdigit() for k in key):
                cy, cx = int(key[-2]), int(key[-1])
                if cy < stored.shape[0] and cx < stored.shape[1]:
                    stored[cy, cx] = True
    return (int(chunks[-2]), int(chunks[-1])), stored


def _tiff_chunks(path: Path) -> tuple[tuple[int, int], np.ndarray] | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if len(series.levels[0].pages) != 1:
            return None
        page = series.levels[0].pages[0]
        if page.samplesperpixel != 1 or page.imagedepth != 1:
            return None
        h, w = page.imagelength, page.imagewidth
        ch, cw = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, w)
        ch, cw = min(ch, h), min(cw, w)
        counts = np.asarray(page.databytecounts)
        grid = (math.ceil(h / ch), math.ceil(w / cw))
        if counts.size != grid[0] * grid[1]:
            return None
        return (int(ch), int(cw)), counts.reshape(grid) > 0


def _geojson_boxes(source: Any) -> np.ndarray | None:
    """The nuclei's bounding boxes when the source is GeoJSON polygons at level 0, else None."""
    from ..io.geojson import GeoJSONLabels

    data = getattr(source, "data", None)
    if isinstance(data, GeoJSONLabels) and data.downsample == 1:
        return data.polygons.boxes
    return None
