"""From what the viewer shows to a Region in a layer's pixels (napari-aware, Qt-free)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..generation.region import GenerationError, Region
from ._text import REGION_SHAPES, REGION_VIEW, REGION_WHOLE


def layer_plane(layer: Any, viewer: Any) -> tuple[Any, str | None]:
    """The 2-D (Y, X[, RGB]) data of ``layer`` on display (level 0 if multiscale), and a note when a slice of
    N-D data was taken."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    rgb = int(bool(getattr(layer, "rgb", False)))  # an RGB layer's last axis is its colour, not space
    if data.ndim - rgb == 2:
        return data, None
    point = layer.world_to_data(viewer.dims.point)
    lead = data.shape[: data.ndim - 2 - rgb]
    index = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point[:-2], lead, strict=False))
    note = f"'{layer.name}' is {data.ndim - rgb}-D: using the displayed slice {index}."
    return data[index], note


def layer_mpp(layer: Any) -> float | None:
    """The layer's pixel size in µm, when it is known (our reader's metadata, or µm units)."""
    meta = layer.metadata.get("napari_crafts", {}) if isinstance(layer.metadata, dict) else {}
    if meta.get("mpp"):
        return float(meta["mpp"])
    units = getattr(layer, "units", None)
    if units is not None and str(units[-1]) in ("micrometer", "µm", "um"):
        return float(layer.scale[-1])
    return None


def _to_data_box(layer: Any, viewer: Any, world_points: np.ndarray, shape: tuple[int, int]) -> Region | None:
    data_pts = np.array([layer.world_to_data(p)[-2:] for p in world_points])
    # pixel i is centred on data coordinate i: take the pixels whose centres lie in [min, max)
    y0, x0 = np.ceil(data_pts.min(axis=0) - 1e-6).astype(int)
    y1, x1 = np.ceil(data_pts.max(axis=0) - 1e-6).astype(int)
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, shape[0]), min(x1, shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    return Region(int(y0), int(x0), int(y1 - y0), int(x1 - x0))


def region_for(choice: str, layer: Any, viewer: Any, shape: tuple[int, int], shapes_layer: Any = None) -> Region:
    """The Region of ``layer`` (2-D plane of ``shape``) chosen in the widget, clipped to the layer."""
    if choice == REGION_WHOLE:
        return Region(0, 0, *shape)
    point = np.asarray(viewer.dims.point, dtype=float)
    if choice == REGION_VIEW:
        if viewer.dims.ndisplay != 2:
            raise GenerationError("The current view is 3-D: switch the viewer to 2-D to use 'current view'.")
        h, w = viewer.canvas.size
        cy, cx = viewer.camera.center[-2:]
        half = np.array([h, w]) / 2 / viewer.camera.zoom
        corners = []
        for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            p = point.copy()
            p[-2:] = (cy + dy * half[0], cx + dx * half[1])
            corners.append(p)
        region = _to_data_box(layer, viewer, np.array(corners), shape)
        if region is None:
            raise GenerationError(f"'{layer.name}' is not in the current view: pan to it or choose 'whole layer'.")
        return region
    if choice == REGION_SHAPES:
        if shapes_layer is None or len(shapes_layer.data) == 0:
            raise GenerationError("Draw a rectangle in a Shapes layer and choose that layer, or pick another region.")
        verts = np.asarray(shapes_layer.data[-1], dtype=float)
        world = []
        for v in verts:
            w = shapes_layer.data_to_world(v)
            p = point.copy()
            p[-2:] = np.asarray(w)[-2:]
            world.append(p)
        region = _to_data_box(layer, viewer, np.array(world), shape)
        if region is None:
            raise GenerationError(
                f"The rectangle in '{shapes_layer.name}' lies outside '{layer.name}': draw it over that layer."
            )
        return region
    raise GenerationError(f"Unknown region choice '{choice}'.")
