"""The docks' *tissue* choice: auto / everywhere / a Labels or Shapes layer → a tissue spec for the source.

The rule itself lives in ``generation.tissue``; this only turns what the viewer holds into a spec: a Labels
layer's non-zero pixels, or a Shapes layer's polygons rasterised, each on the source layer's pixel grid.
"""

from __future__ import annotations

import math
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox

from ..generation.tissue import MAX_MASK_SIDE, TissueError
from ._text import TISSUE_AUTO, TISSUE_EVERYWHERE, TOOLTIPS


def _choices(viewer: Any) -> list[str]:
    layers = [layer.name for layer in viewer.layers if isinstance(layer, (napari.layers.Labels, napari.layers.Shapes))]
    return [TISSUE_AUTO, TISSUE_EVERYWHERE, *layers]


class TissueChoice(ComboBox):
    """Where the tissue is: auto (from the source), everywhere, or a Labels / Shapes layer of the viewer."""

    def __init__(self, viewer: Any) -> None:
        self._viewer = viewer
        super().__init__(choices=lambda _: _choices(viewer), value=TISSUE_AUTO, label="tissue",
                         tooltip=TOOLTIPS["tissue"])

    def spec(self, source_layer: Any, shape: tuple[int, int]) -> Any:
        """"auto", "all", or a boolean mask on (a coarsening of) ``source_layer``'s pixel grid of ``shape``."""
        value = self.value
        if value in (None, TISSUE_AUTO):
            return "auto"
        if value == TISSUE_EVERYWHERE:
            return "all"
        if value not in self._viewer.layers:
            raise TissueError(f"The tissue layer '{value}' is no longer in the viewer: choose another.")
        layer = self._viewer.layers[value]
        if layer.name == source_layer.name:  # (the viewer a plugin gets hands out proxies: compare names)
            raise TissueError(f"'{value}' is the source itself: choose auto, everywhere or another layer as tissue.")
        if isinstance(layer, napari.layers.Shapes):
            return shapes_mask(layer, source_layer, shape)
        return labels_mask(layer, source_layer, shape)


def _data_box(layer: Any, data_shape: tuple[int, ...], source_layer: Any) -> np.ndarray:
    """The pixel edges of ``layer`` (2-D data of ``data_shape``) on ``source_layer``'s pixel grid: (2, 2)
    [[y0, x0], [y1, x1]], where the source itself spans [[0, 0], [H, W]]."""
    lead = np.zeros(layer.ndim - 2)
    corners = [np.r_[lead, -0.5, -0.5], np.r_[lead, data_shape[-2] - 0.5, data_shape[-1] - 0.5]]
    pts = []
    for c in corners:
        world = np.asarray(layer.data_to_world(c))[-2:]
        pts.append(np.asarray(source_layer.world_to_data(np.r_[np.zeros(source_layer.ndim - 2), world]))[-2:] + 0.5)
    return np.sort(np.array(pts), axis=0)


def labels_mask(layer: Any, source_layer: Any, shape: tuple[int, int]) -> np.ndarray:
    """A Labels layer as tissue (non-zero): it must cover the source layer (same place, any resolution)."""
    data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data  # the smallest level is enough
    data = np.asarray(data)
    if data.ndim != 2:
        raise TissueError(f"The tissue layer '{layer.name}' is {data.ndim}-D: give a 2-D mask.")
    level0 = layer.data[0].shape if getattr(layer, "multiscale", False) else data.shape
    box = _data_box(layer, level0, source_layer)
    H, W = shape
    tol = 0.02 * max(H, W)
    if np.abs(box - [[0, 0], [H, W]]).max() > tol:
        raise TissueError(f"The tissue layer '{layer.name}' does not lie over the source (it spans "
                          f"{box[0].round().tolist()}–{box[1].round().tolist()} of its pixels, not the whole "
                          f"{H}×{W}): it is in another coordinate system; scale and place it over the source.")
    return data != 0


def shapes_mask(layer: Any, source_layer: Any, shape: tuple[int, int]) -> np.ndarray:
    """A Shapes layer's polygons (and rectangles, ellipses) as tissue, drawn on a coarse grid over the source."""
    from skimage.draw import polygon as fill_polygon

    H, W = shape
    c = max(1, math.ceil(max(H, W) / MAX_MASK_SIDE))
    mask = np.zeros((math.ceil(H / c), math.ceil(W / c)), dtype=bool)
    cell = np.array([H / mask.shape[0], W / mask.shape[1]])  # exactly what mask_from_array will scale it by
    for verts, kind in zip(layer.data, layer.shape_type, strict=True):
        if kind in ("line", "path") or len(verts) < 3:
            continue
        pts = np.array([source_layer.world_to_data(np.r_[np.zeros(source_layer.ndim - 2),
                                                         layer.data_to_world(v)[-2:]])[-2:] for v in verts])
        rr, cc = fill_polygon((pts[:, 0] + 0.5) / cell[0] - 0.5, (pts[:, 1] + 0.5) / cell[1] - 0.5, mask.shape)
        mask[rr, cc] = True
    if not mask.any():
        raise TissueError(f"The shapes of '{layer.name}' cover none of the source: draw polygons over the tissue "
                          "(in the source's coordinate system).")
    return mask
