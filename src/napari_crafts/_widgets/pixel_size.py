"""Dock widget "Pixel size": give layers their µm/px when the file did not say (or said it wrong)."""

from __future__ import annotations

from typing import Any

import napari
from magicgui import magic_factory


@magic_factory(
    call_button="Set pixel size",
    mpp={"label": "µm/px", "min": 0.001, "max": 1000.0, "step": 0.001, "value": 0.25},
    layers={"label": "layers"},
)
def pixel_size(layers: list[napari.layers.Layer], mpp: float = 0.25) -> None:
    """Set the pixel size (µm/px) of the chosen layers' Y and X axes and record it for napari-crafts."""
    from napari.utils.notifications import show_info

    for layer in layers:
        scale = list(layer.scale)
        scale[-2:] = [mpp, mpp]
        layer.scale = scale
        meta: dict[str, Any] = layer.metadata.setdefault("napari_crafts", {})
        meta["mpp"] = mpp
    if layers:
        show_info(f"Pixel size {mpp} µm/px set on {', '.join(layer.name for layer in layers)}.")
