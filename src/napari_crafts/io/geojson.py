"""Nuclear segmentations as GeoJSON polygons (QuPath, HoVer-Net converters, …) → a lazy labels image.

QuPath exports detections and cells as a GeoJSON FeatureCollection in level-0 pixel coordinates (x, y); a
cell's nucleus is its ``nucleusGeometry`` when present, else its ``geometry``. ``GeoJSONLabels`` is an
array-like (``shape``, ``dtype``, basic slicing) that rasterises only the polygons touching the window asked
for, so a whole slide's nuclei never become one full-resolution array. Nucleus *i* (in file order) gets label
*i* + 1; where polygons overlap, the later one wins. The image's origin is the slide's (0, 0), so the result
overlays the slide exactly; its extent is the nuclei's unless a ``shape`` is given.

It pickles as its path and reopens (cached per process), so it can be shipped to dask.distributed workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .windows import WindowedArray

SUFFIXES = (".geojson", ".json")


class GeoJSONError(ValueError):
    """A GeoJSON file that holds no usable nuclei; the message names the file and what was found."""


@dataclass(frozen=True)
class Polygons:
    """Per nucleus, its parts (one per polygon; each [exterior, *holes] in (y, x) pixels), and bounding boxes."""

    nuclei: list[list[list[np.ndarray]]]
    boxes: np.ndarray  # (n, 4) int: y0, x0, y1, x1 (exclusive)
    skipped: dict[str, int]

    @property
    def extent(self) -> tuple[int, int]:
        """(height, width) that holds every nucleus: the last pixel any vertex lies in, plus one."""
        top = np.floor(np.max([part[0].max(axis=0) for parts in self.nuclei for part in parts], axis=0))
        return int(top[0]) + 1, int(top[1]) + 1


def read_polygons(path: str | Path) -> Polygons:
    """The nuclei of a GeoJSON file (FeatureCollection, list of Features, one Feature or one geometry)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeoJSONError(f"{path.name} could not be read as GeoJSON ({exc}).") from None
    nuclei: list[list[list[np.ndarray]]] = []
    skipped: dict[str, int] = {}
    for geometry in _geometries(doc):
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        coords = geometry.get("coordinates") if kind else None
        polys: list[Any] | None = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else None
        if not polys:
            skipped[str(kind)] = skipped.get(str(kind), 0) + 1
            continue
        try:  # GeoJSON rings are (x, y): keep (y, x); a MultiPolygon's parts share one label
            parts = [[np.asarray(ring, float)[:, 1::-1] for ring in poly] for poly in polys]
        except (ValueError, IndexError, TypeError):
            parts = []
        parts = [part for part in parts if part and all(len(ring) >= 3 for ring in part)]
        if not parts:
            skipped["malformed"] = skipped.get("malformed", 0) + 1
            continue
        nuclei.append(parts)
    if not nuclei:
        found = ", ".join(f"{n} {k}" for k, n in skipped.items()) or "no features"
        raise GeoJSONError(f"{path.name} has no nucleus polygons ({found}); export detections or cells as "
                           "GeoJSON polygons in pixel coordinates.")
    boxes = np.array([_box(np.concatenate([part[0] for part in parts])) for parts in nuclei], dtype=np.int64)
    if (boxes[:, :2] < -1).any():  # a contour may run half a pixel outside the image, no more
        raise GeoJSONError(f"{path.name} has negative coordinates: expected level-0 pixel coordinates "
                           "(as QuPath exports them), not µm or geographic coordinates.")
    boxes[:, :2] = np.maximum(boxes[:, :2], 0)
    return Polygons(nuclei, boxes, skipped)


def _box(points: np.ndarray) -> list[int]:
    lo, hi = np.floor(points.min(axis=0)), np.ceil(points.max(axis=0)) + 1
    return [int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])]


def _geometries(doc: Any) -> Any:
    """Each nucleus geometry of a GeoJSON document (QuPath cells: the nucleus, not the cell outline)."""
    if isinstance(doc, list):
        for item in doc:
            yield from _geometries(item)
    elif isinstance(doc, dict):
        kind = doc.get("type")
        if kind == "FeatureCollection":
            yield from _geometries(doc.get("features", []))
        elif kind == "Feature":
            yield doc.get("nucleusGeometry") or doc.get("geometry")
        elif kind == "GeometryCollection":
            yield from doc.get("geometries", [])
        else:
            yield doc


@lru_cache(maxsize=4)
def _cached_polygons(path: str, mtime: float) -> Polygons:
    return read_polygons(path)


class GeoJSONLabels(WindowedArray):
    """A GeoJSON file's nuclei as a lazy 2-D labels array; slicing rasterises only the window asked for."""

    def __init__(self, path: str | Path, shape: tuple[int, int] | None = None, *, downsample: int = 1) -> None:
        self.path = str(Path(path).expanduser().absolute())
        self.downsample = int(downsample)  # level-0 px per px of this array (for a multiscale pyramid)
        polys = self.polygons
        full = shape if shape is not None else polys.extent
        self.shape = tuple(-(-int(n) // self.downsample) for n in full)
        self.dtype = np.dtype(np.int32)

    @property
    def polygons(self) -> Polygons:
        return _cached_polygons(self.path, Path(self.path).stat().st_mtime)

    @property
    def count(self) -> int:
        return len(self.polygons.nuclei)

    def __getstate__(self) -> dict[str, Any]:  # ship the path, not the polygons
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype, "downsample": self.downsample}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Labels of the box (y, x, height, width) in this array's pixels; only the nuclei touching it are drawn."""
        from skimage.draw import polygon as fill

        out = np.zeros((height, width), self.dtype)
        polys, d = self.polygons, self.downsample
        b = polys.boxes if d == 1 else np.concatenate([polys.boxes[:, :2] // d, -(-polys.boxes[:, 2:] // d)], axis=1)
        hits = np.flatnonzero((b[:, 0] < y + height) & (b[:, 2] > y) & (b[:, 1] < x + width) & (b[:, 3] > x))
        for i in hits:  # in file order: where nuclei overlap, the later one wins
            y0, x0 = max(b[i, 0], y), max(b[i, 1], x)
            y1, x1 = min(b[i, 2], y + height), min(b[i, 3], x + width)
            inside = np.zeros((y1 - y0, x1 - x0), bool)
            for exterior, *holes in polys.nuclei[i]:
                for k, ring in enumerate((exterior, *holes)):
                    rr, cc = fill(ring[:, 0] / d - y0, ring[:, 1] / d - x0, shape=inside.shape)
                    inside[rr, cc] = k == 0
            out[y0 - y : y1 - y, x0 - x : x1 - x][inside] = i + 1
        return out


def geojson_levels(path: str | Path, shape: tuple[int, int] | None = None, *, chunk: int = 1024,
                   smallest: int = 2048) -> list[Any]:
    """A lazy multiscale pyramid (dask arrays, downsampled 1, 2, 4, … until the longer side ≤ ``smallest``)."""
    import dask.array as da

    levels, d = [], 1
    while True:
        arr = GeoJSONLabels(path, shape, downsample=d)
        levels.append(da.from_array(arr, chunks=(chunk, chunk), asarray=True, name=f"geojson-{arr.path}-{d}"))
        if max(arr.shape) <= smallest:
            return levels
        d *= 2
