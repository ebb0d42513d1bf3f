"""The pixel size (µm/px) of an image shown in a viewer, and where it came from (Qt-free, napari-free).

In order: what the file said (our reader's record) or what the user set (the Pixel size widget); the layer's
scale when its axis unit is a length (µm, nm, mm); the layer's scale when other layers of the viewer are in µm
(a labels layer added with ``scale=0.499`` over the CMU-1 slide: the world is in µm, so is its scale); else
unknown — the model's own pixel size is then assumed, and the user is told before the run.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Lengths a napari axis unit may name, in µm.
UNIT_TO_UM = {"micrometer": 1.0, "micron": 1.0, "µm": 1.0, "um": 1.0, "nanometer": 1e-3, "nm": 1e-3,
              "millimeter": 1e3, "mm": 1e3}


@dataclass(frozen=True)
class PixelSize:
    mpp: float | None
    origin: str  # where the value came from, in words the widget shows

    @property
    def known(self) -> bool:
        return self.mpp is not None


def pixel_size(*, recorded: float | None = None, recorded_by: str = "file", scale: float = 1.0,
               unit: str | None = None, world_in_um: str | None = None) -> PixelSize:
    """Decide a layer's µm/px.

    ``recorded``: what our reader or the Pixel size widget stored (``recorded_by`` "file" or "user");
    ``scale``/``unit``: the layer's X scale and axis unit; ``world_in_um``: the name of another layer whose
    pixel size is known and whose scale is in µm (None when there is none).
    """
    if recorded is not None and recorded > 0:
        return PixelSize(float(recorded), "set in Pixel size" if recorded_by == "user" else "from the file")
    factor = UNIT_TO_UM.get(str(unit or "").strip().lower())
    if factor is not None and scale > 0:
        return PixelSize(float(scale) * factor, f"from the layer's scale ({unit})")
    if world_in_um is not None and scale > 0 and scale != 1.0:
        return PixelSize(float(scale), f"from the layer's scale (µm, as '{world_in_um}')")
    return PixelSize(None, "unknown")
