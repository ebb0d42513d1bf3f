"""Tissue extent: where a synthetic slide is tissue and where it is glass.

A control image says where nuclei are and nothing about where tissue is, so a model cannot tell glass from
nucleus-free stroma. The tissue extent is therefore an input of its own, one rule everywhere (``--tissue``, the
docks' *tissue* choice, ``LabelsSource(…, tissue=…)``):

- ``"auto"`` (default): from the source itself (``auto_from_labels``, ``auto_from_fluorescence`` below);
- ``"all"``: everything is tissue (every tile is generated, nothing is composited);
- a file: a mask image (TIFF/OME-TIFF/PNG/OME-Zarr; non-zero = tissue) at the source's size or smaller — a
  thumbnail is scaled to cover the source's extent — or QuPath GeoJSON annotations (polygons in level-0 px);
- an array (a mask at the source's size or smaller) or a ``TissueMask``.

What generation does with it (``generation.region``): tiles with no tissue are glass and are not sent to the
model; every tile that touches tissue is generated, nuclei or not (no white holes); for models whose control
encoding cannot carry tissue (``nuclei-v1``, the paper's mask; ``fluorescence-rgb-v1``), each generated tile
is composited over the glass colour with the mask's alpha (bilinear at the mask's resolution, so the edge is
feathered over one mask cell: 8 µm for ``auto``). Inside tissue the alpha is exactly 1 and the pixels are the
model's, bit for bit.

The alpha of a pixel depends only on its level-0 position, so overlapping tiles, the whole-slide path and a
resumed run all composite identically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.windows import read_padded
from .conditioning import ConditioningError

#: What ``--tissue`` takes besides a file path.
TISSUE_CHOICES = ("auto", "all")

# ── the auto rule (docs/tissue.md says how it was chosen and where it fails) ─────────────────────────────
#: Side of a mask cell, µm: nuclei are reduced to "a nucleus pixel in this cell" (labels) or mean signal.
AUTO_CELL_UM = 8.0
#: Closing radius, µm: gaps between nuclei up to about twice this are bridged (stroma between nuclei).
AUTO_CLOSE_UM = 48.0
#: Holes inside tissue smaller than this (µm²) are filled; larger ones (lumens, tears, glass bays) stay open.
AUTO_HOLE_UM2 = 40_000.0
#: Pieces of tissue smaller than this (µm²) are dropped (isolated debris, false nuclei on glass).
AUTO_MIN_UM2 = 2_500.0
#: Tissue reaches this far beyond the outermost nuclei (their cytoplasm), µm.
AUTO_EDGE_UM = 8.0
#: Fluorescence: a cell is tissue when its smoothed mean signal (0–1 after the channel limits) exceeds this …
AUTO_SIGNAL = 0.12
#: … or when a tenth of its pixels (``AUTO_BRIGHT_SHARE``) are this bright: a nucleus of nuclear-only IF, whose mean
#: stays low between nuclei (a lone hot pixel on glass is not).
AUTO_BRIGHT = 0.5
AUTO_BRIGHT_SHARE = 0.1
#: Most cells along a side of an auto mask; larger slides get coarser cells (the mask ships with every task).
MAX_MASK_SIDE = 4096
#: Level-0 pixels read per block while building an auto mask (a multiple of the cell is used).
READ_BLOCK = 2048
#: Largest aspect-ratio difference between a mask file and the source.
ASPECT_TOLERANCE = 0.02

RunTasks = Callable[[str, Callable[[Any], Any], Sequence[Any]], list[Any]]


class TissueError(ConditioningError):
    """A tissue mask that cannot be used; the message says what was wrong and what to do."""


def _serial(name: str, fn: Callable[[Any], Any], groups: Sequence[Any]) -> list[Any]:
    return [fn(g) for g in groups]


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A coarse tissue mask over a source: ``mask[i, j]`` covers source px from ``origin + (i, j) * cell``."""

    mask: np.ndarray  # (h, w) bool, True = tissue
    origin: tuple[float, float]  # source px (y, x) of the top-left corner of mask[0, 0]
    cell: tuple[float, float]  # source px per mask px (y, x)
    how: str  # where it came from, in words (recorded in provenance)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", np.ascontiguousarray(self.mask, dtype=bool))

    @property
    def fraction(self) -> float:
        """Share of the mask's cells that are tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def alpha(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        """(height, width) float32 in [0, 1]: how much of each source pixel is tissue (bilinear at pixel centres).

        Elementwise arithmetic only (no BLAS), so the value of a pixel never depends on the window asked for.
        """
        (iy0, iy1, fy), (ix0, ix1, fx) = self._axis(y, height, 0), self._axis(x, width, 1)
        m = self.mask.astype(np.float32)
        top = m[iy0][:, ix0] * (1 - fx) + m[iy0][:, ix1] * fx
        bottom = m[iy1][:, ix0] * (1 - fx) + m[iy1][:, ix1] * fx
        return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)

    def _axis(self, start: int, n: int, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = self.mask.shape[axis]
        pos = (np.arange(start, start + n, dtype=np.float64) + 0.5 - self.origin[axis]) / self.cell[axis] - 0.5
        pos = np.clip(pos, 0.0, size - 1.0)
        i0 = np.floor(pos).astype(np.intp)
        i1 = np.minimum(i0 + 1, size - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    def touches(self, y: int, x: int, height: int, width: int) -> bool:
        """Whether any pixel of the window has some tissue: a tissue cell within the bilinear support of its
        pixels (the cells around its first and last pixel centres, and those between)."""
        (r0, r1), (c0, c1) = self._span(y, height, 0), self._span(x, width, 1)
        return bool(self.mask[r0 : r1 + 1, c0 : c1 + 1].any())

    def _span(self, start: int, n: int, axis: int) -> tuple[int, int]:
        first, last = self._axis(start, 1, axis), self._axis(start + n - 1, 1, axis)
        return int(first[0][0]), int(last[1][0])

    def describe(self) -> dict[str, Any]:
        return {"how": self.how, "mask_shape": list(self.mask.shape),
                "cell_source_px": [round(c, 4) for c in self.cell],
                "origin_source_px": [round(o, 4) for o in self.origin], "tissue_fraction": round(self.fraction, 4)}


def composite(image: np.ndarray, alpha: np.ndarray, glass: Sequence[int]) -> np.ndarray:
    """``image`` (uint8 RGB) over the glass colour with ``alpha``: unchanged where alpha is 1, glass where 0."""
    if bool(alpha.min() >= 1.0):
        return image
    a = alpha[..., None]
    out = image.astype(np.float32) * a + np.asarray(glass, np.float32) * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ── resolving a spec ─────────────────────────────────────────────────────────────────────────────────────


def is_choice(spec: Any) -> bool:
    """Whether a spec is one of the words ("auto", "all") rather than the user's own mask."""
    return isinstance(spec, str) and spec in TISSUE_CHOICES


def describe_spec(spec: Any) -> str:
    """A tissue spec in words, before it is resolved (for messages and provenance)."""
    if isinstance(spec, TissueMask):
        return spec.how
    if isinstance(spec, np.ndarray):
        return f"a mask array of shape {tuple(spec.shape)}"
    return str(spec)


def check_spec(spec: Any) -> None:
    """Refuse a spec that cannot be a tissue extent, before anything loads (a missing file, a wrong word)."""
    if spec is None or isinstance(spec, (TissueMask, np.ndarray)) or spec in TISSUE_CHOICES:
        return
    if not isinstance(spec, (str, Path)):
        raise TissueError(f"tissue must be 'auto', 'all', a mask file or a mask array, got {type(spec).__name__}.")
    path = Path(spec).expanduser()
    if not path.exists():
        raise TissueError(f"--tissue {spec}: no such file; give 'auto', 'all', a mask image or a GeoJSON file.")


def resolve_tissue(source: Any, box: tuple[int, int, int, int], mpp: float,
                   run_tasks: RunTasks | None = None) -> TissueMask | None:
    """The tissue extent of ``source`` over ``box`` (y0, x0, y1, x1 in level-0 px) at ``mpp`` µm/px, or None
    when everything is tissue. ``run_tasks`` spreads the reading of an auto mask (dask in the whole-slide
    path; a plain loop otherwise: the same cells either way)."""
    spec = getattr(source, "tissue", "all")
    check_spec(spec)
    if spec is None or (isinstance(spec, str) and spec == "all"):
        return None
    if isinstance(spec, TissueMask):
        return spec
    if isinstance(spec, np.ndarray):
        return mask_from_array(spec, source.shape, how=f"a mask array of shape {tuple(spec.shape)}")
    if isinstance(spec, str) and spec == "auto":
        if source.mode == "labels":
            return auto_from_labels(source, box, mpp, run_tasks)
        return auto_from_fluorescence(source, box, mpp, run_tasks)
    return mask_from_file(Path(spec).expanduser(), source.shape)


# ── masks given by the user ──────────────────────────────────────────────────────────────────────────────


def mask_from_array(mask: Any, shape: tuple[int, int], *, how: str) -> TissueMask:
    """A mask (non-zero = tissue; RGB: any channel) at the source's size or smaller, scaled to cover it."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (3, 4):
        m = m[..., :3].max(axis=-1)
    if m.ndim != 2 or 0 in m.shape:
        raise TissueError(f"The tissue mask ({how}) has shape {tuple(m.shape)}: give a 2-D mask (non-zero = tissue).")
    H, W = shape
    h, w = m.shape
    if h > H or w > W:
        raise TissueError(f"The tissue mask ({how}) is {h}×{w} px, larger than the source ({H}×{W} px): give a "
                          "mask at the source's size or smaller (a thumbnail).")
    if abs((h / w) / (H / W) - 1) > ASPECT_TOLERANCE:
        raise TissueError(f"The tissue mask ({how}) is {h}×{w} px, the source {H}×{W} px: their aspect ratios differ "
                          f"by more than {ASPECT_TOLERANCE:.0%}; give a mask of the whole source.")
    tissue = m != 0
    if not tissue.any():
        raise TissueError(f"The tissue mask ({how}) marks no tissue (all zero): non-zero pixels are tissue.")
    return TissueMask(tissue, (0.0, 0.0), (H / h, W / w), how)


def mask_from_file(path: Path, shape: tuple[int, int]) -> TissueMask:
    """A tissue mask from a mask image or QuPath GeoJSON annotations, covering a source of ``shape``."""
    if path.suffix.lower() in (".geojson", ".json"):
        return mask_from_geojson(path, shape)
    return mask_from_array(_read_mask_image(path, max(shape)), shape, how=f"mask file {path.name}")


def _read_mask_image(path: Path, source_side: int) -> np.ndarray:
    """A mask image's pixels, from the smallest pyramid level that still has ``MAX_MASK_SIDE`` px (or level 0)."""
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return np.asarray(im)
        except (OSError, UnidentifiedImageError) as exc:
            raise TissueError(f"--tissue {path.name} could not be read as an image ({exc}).") from None
    from ..io.slide import SlideError, open_slide

    try:
        slide = open_slide(path)
    except (SlideError, OSError, ValueError) as exc:
        raise TissueError(f"--tissue {path.name} could not be read as a mask image ({exc}).") from None
    level = 0
    for i in range(len(slide.downsamples)):
        if max(slide.level_shape(i)) >= min(MAX_MASK_SIDE, source_side):
            level = i
    h, w = slide.level_shape(level)
    return np.asarray(slide.read(level, 0, 0, h, w))


def mask_from_geojson(path: Path, shape: tuple[int, int]) -> TissueMask:
    """QuPath GeoJSON annotations (level-0 px) → a mask: objects classified as tissue or region, or every
    annotation when none is classified so. Detections and cells (nuclei) are never tissue."""
    from skimage.draw import polygon as fill_polygon

    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TissueError(f"--tissue {path.name} could not be read as GeoJSON ({exc}).") from None
    features = doc.get("features", []) if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else (
        doc if isinstance(doc, list) else [doc])
    annotations, tissue = [], []
    for f in features:
        if not isinstance(f, dict):
            continue
        props = f.get("properties") or {}
        kind = str(props.get("objectType", "annotation")).lower()
        geometry = f.get("geometry") if f.get("type") == "Feature" else f
        if kind != "annotation" or not isinstance(geometry, dict):
            continue
        polys = _polygons(geometry)
        if not polys:
            continue
        annotations.append(polys)
        cls = props.get("classification") or {}
        name = str(cls.get("name", "") if isinstance(cls, dict) else cls).lower()
        if name in ("tissue", "region", "region*"):
            tissue.append(polys)
    chosen = tissue or annotations
    if not chosen:
        raise TissueError(f"--tissue {path.name} holds no annotation polygons: export the tissue annotations "
                          "(objects of type annotation, polygons in level-0 px) from QuPath.")
    H, W = shape
    c = max(1, math.ceil(max(H, W) / MAX_MASK_SIDE))
    h, w = math.ceil(H / c), math.ceil(W / c)
    mask = np.zeros((h, w), dtype=bool)
    for polys in chosen:
        for rings in polys:
            for k, ring in enumerate(rings):  # exterior, then holes
                rr, cc = fill_polygon(ring[:, 0] / c - 0.5, ring[:, 1] / c - 0.5, (h, w))
                mask[rr, cc] = k == 0
    if not mask.any():
        raise TissueError(f"--tissue {path.name}: its polygons lie outside the source ({H}×{W} px): they must be "
                          "in the source's level-0 pixel coordinates.")
    which = "classified tissue/region" if tissue else "all"
    return TissueMask(mask, (0.0, 0.0), (float(c), float(c)),
                      f"GeoJSON {path.name}: {len(chosen)} {which} annotation(s)")


def _polygons(geometry: dict[str, Any]) -> list[list[np.ndarray]]:
    """[[exterior, *holes] as (y, x) arrays] of a Polygon / MultiPolygon geometry (GeoJSON rings are x, y)."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    polys: list[Any] = [coords] if kind == "Polygon" else list(coords or []) if kind == "MultiPolygon" else []
    out = []
    for poly in polys:
        try:
            rings = [np.asarray(ring, float)[:, 1::-1] for ring in poly or []]
        except (ValueError, IndexError, TypeError):
            continue
        rings = [r for r in rings if len(r) >= 3]
        if rings:
            out.append(rings)
    return out


# ── auto ─────────────────────────────────────────────────────────────────────────────────────────────────


def auto_cell(box: tuple[int, int, int, int], mpp: float) -> int:
    """Source px per cell of an auto mask: ``AUTO_CELL_UM``, coarser when the region would need more than
    ``MAX_MASK_SIDE`` cells along a side."""
    side = max(box[2] - box[0], box[3] - box[1])
    return max(1, round(AUTO_CELL_UM / mpp), math.ceil(side / MAX_MASK_SIDE))


def _blocks(box: tuple[int, int, int, int], cell: int) -> list[tuple[int, int, int, int]]:
    """Blocks (y, x, h, w) covering ``box``, each a whole number of cells from the box's origin."""
    y0, x0, y1, x1 = box
    step = max(cell, READ_BLOCK // cell * cell)
    return [(y, x, min(step, -(-(y1 - y) // cell) * cell), min(step, -(-(x1 - x) // cell) * cell))
            for y in range(y0, y1, step) for x in range(x0, x1, step)]


def _pool(values: np.ndarray, cell: int, reduce: str) -> np.ndarray:
    """(h, w) → (h // cell, w // cell) by max ("any", "max") or mean over each cell (h, w multiples of cell)."""
    h, w = values.shape
    v = values.reshape(h // cell, cell, w // cell, cell)
    return v.max(axis=(1, 3)) if reduce in ("any", "max") else v.mean(axis=(1, 3), dtype=np.float64)


def labels_cells_task(source: Any, cell: int, box: tuple[int, int, int, int],
                      blocks: list[tuple[int, int, int, int]]) -> list[tuple[int, int, np.ndarray]]:
    """Per block: (first cell row, first cell col, True where the cell holds a nucleus pixel) (a task)."""
    out = []
    for y, x, h, w in blocks:
        lab = read_padded(source.data, y, x, h, w)
        nuclei = lab != 0
        nuclei[min(h, box[2] - y):, :] = False  # padding past the region is not the source's
        nuclei[:, min(w, box[3] - x):] = False
        out.append(((y - box[0]) // cell, (x - box[1]) // cell, _pool(nuclei, cell, "any")))
    return out


def signal_cells_task(source: Any, cell: int, box: tuple[int, int, int, int],
                      blocks: list[tuple[int, int, int, int]]) -> list[tuple[int, int, np.ndarray]]:
    """Per block: (first cell row, first cell col, per cell the mean signal and the share of pixels brighter than
    ``AUTO_BRIGHT``; signal: 0–1 after each channel's limits, the brightest channel with a role per pixel) (a task)."""
    out = []
    for y, x, h, w in blocks:
        signal = source.signal(y, x, h, w)
        signal[min(h, box[2] - y):, :] = 0
        signal[:, min(w, box[3] - x):] = 0
        pooled = np.stack([_pool(signal, cell, "mean"), _pool(signal > AUTO_BRIGHT, cell, "mean")], axis=-1)
        out.append(((y - box[0]) // cell, (x - box[1]) // cell, pooled))
    return out


def _cells(task: Callable[..., Any], source: Any, box: tuple[int, int, int, int], cell: int,
           run_tasks: RunTasks | None, dtype: Any, per_cell: tuple[int, ...] = ()) -> np.ndarray:
    """The region's cells as ``task`` reduces its blocks (``per_cell``: the shape of one cell's values)."""
    from functools import partial

    blocks = _blocks(box, cell)
    groups = [blocks[i : i + 8] for i in range(0, len(blocks), 8)]
    cells = np.zeros((-(-(box[2] - box[0]) // cell), -(-(box[3] - box[1]) // cell), *per_cell), dtype=dtype)
    for parts in (run_tasks or _serial)("tissue", partial(task, source, cell, box), groups):
        for cy, cx, part in parts:
            cells[cy : cy + part.shape[0], cx : cx + part.shape[1]] = part
    return cells


def _rule_words() -> str:
    """The closing, hole, piece and edge rule in words (both auto masks' provenance)."""
    return (f"closing {AUTO_CLOSE_UM:g} µm, holes < {AUTO_HOLE_UM2:g} µm² filled, pieces < {AUTO_MIN_UM2:g} µm² "
            f"dropped, edge + {AUTO_EDGE_UM:g} µm")


def tissue_from_cells(nuclei: np.ndarray, cell_um: float) -> np.ndarray:
    """The auto rule on a grid of ``cell_um``-µm cells (True: nuclei or signal there): close the gaps between
    nuclei (``AUTO_CLOSE_UM``), fill small holes (``AUTO_HOLE_UM2``), drop small pieces (``AUTO_MIN_UM2``),
    grow by ``AUTO_EDGE_UM``."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    r = max(1, round(AUTO_CLOSE_UM / cell_um))
    padded = np.pad(nuclei, r, mode="constant")  # closing never erodes from the region's border
    closed = ndi.binary_closing(padded, structure=disk(r))[r:-r, r:-r]
    area = cell_um**2
    closed = ~_drop_small_pieces(~closed, max(1, int(AUTO_HOLE_UM2 / area)))  # small holes inside tissue filled
    smallest = max(1, int(AUTO_MIN_UM2 / area))
    if closed.size >= 4 * smallest:  # a region hardly larger than a piece cannot tell debris from tissue
        closed = _drop_small_pieces(closed, smallest)
    e = round(AUTO_EDGE_UM / cell_um)
    return ndi.binary_dilation(closed, structure=disk(e)) if e > 0 else closed


def _drop_small_pieces(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` without its pieces of at most ``max_size`` cells, except those touching the region's border (they
    may go on outside it: a small region is never emptied for being small)."""
    from scipy import ndimage as ndi

    pieces, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    keep = sizes > max_size
    edge = np.unique(np.concatenate([pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1]]))
    keep[edge] = True
    keep[0] = False
    return keep[pieces]


def auto_from_labels(source: Any, box: tuple[int, int, int, int], mpp: float,
                     run_tasks: RunTasks | None = None) -> TissueMask:
    """Tissue from the nuclei alone (the rule in ``tissue_from_cells``), over the region ``box``."""
    cell = auto_cell(box, mpp)
    nuclei = _cells(labels_cells_task, source, box, cell, run_tasks, bool)
    tissue = tissue_from_cells(nuclei, cell * mpp)
    how = f"auto from the nuclei: {cell * mpp:g}-µm cells, {_rule_words()}"
    return TissueMask(tissue, (float(box[0]), float(box[1])), (float(cell), float(cell)), how)


def auto_from_fluorescence(source: Any, box: tuple[int, int, int, int], mpp: float,
                           run_tasks: RunTasks | None = None) -> TissueMask:
    """Tissue where the channels with a role have signal above their background: the mean signal per cell
    (0–1 after each channel's limits, brightest channel per pixel), smoothed over ~2 cells, above
    ``AUTO_SIGNAL``, or ``AUTO_BRIGHT_SHARE`` of the cell brighter than ``AUTO_BRIGHT`` (nuclei of nuclear-only
    IF); then the same closing, hole and piece rule as for nuclei."""
    from scipy import ndimage as ndi

    cell = auto_cell(box, mpp)
    signal = _cells(signal_cells_task, source, box, cell, run_tasks, np.float64, per_cell=(2,))  # mean, bright
    smooth = ndi.gaussian_filter(signal[..., 0], sigma=2.0, mode="nearest")  # the region's edge is not glass
    tissue = tissue_from_cells((smooth > AUTO_SIGNAL) | (signal[..., 1] >= AUTO_BRIGHT_SHARE), cell * mpp)
    how = (f"auto from the fluorescence: {cell * mpp:g}-µm cells where the smoothed signal > {AUTO_SIGNAL:g} or "
           f"{AUTO_BRIGHT_SHARE:.0%} of pixels > {AUTO_BRIGHT:g} (0–1 after the channel limits), {_rule_words()}")
    return TissueMask(tissue, (float(box[0]), float(box[1])), (float(cell), float(cell)), how)
