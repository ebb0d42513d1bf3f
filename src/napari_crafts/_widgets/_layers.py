"""What the generation widgets read from napari layers (napari-aware, Qt-free): a layer's pixel size and where
it came from, and the data a job takes with it."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io.pixel_size import PixelSize, pixel_size


def record(layer: Any) -> dict[str, Any]:
    """The layer's napari-crafts metadata (our reader's record, the Pixel size widget's value), or {}."""
    meta = layer.metadata.get("napari_crafts") if isinstance(layer.metadata, dict) else None
    return meta if isinstance(meta, dict) else {}


#: What napari-crafts notes about a layer's file (the reader: path, kind, pixel size, channel), pixel size (the
#: Pixel size widget) and sample data (where it is from, its assumed pixel size): information about the file,
#: never a provenance record.
FILE_INFO_KEYS = frozenset({"path", "mpp", "mpp_set_by", "kind", "format", "channel", "channel_index", "sample",
                            "mpp_note"})


def provenance_record(layer: Any) -> dict[str, Any] | None:
    """The layer's provenance record (its napari-crafts metadata whole), or None when that metadata holds only
    :data:`FILE_INFO_KEYS` (a real slide opened with our reader is not a record that "does not say synthetic")."""
    meta = record(layer)
    return meta if set(meta) - FILE_INFO_KEYS else None


def axis_unit(layer: Any) -> str:
    units = getattr(layer, "units", None)
    return str(units[-1]) if units else "pixel"


def layer_pixel_size(layer: Any, viewer: Any) -> PixelSize:
    """The µm/px of ``layer``: recorded (file or Pixel size), from its scale and unit, or as the µm layers beside it."""
    meta = record(layer)
    world = next((other.name for other in viewer.layers
                  if other is not layer and record(other).get("mpp") and axis_unit(other) == "micrometer"), None)
    return pixel_size(recorded=meta.get("mpp"), recorded_by=str(meta.get("mpp_set_by", "file")),
                      scale=float(layer.scale[-1]), unit=axis_unit(layer), world_in_um=world)


def job_data(plane: Any) -> Any:
    """The data a background job reads: an in-memory plane is copied now, on the main thread, so the job never
    reads a layer (painting, or removing the layer, cannot change or free its input); a lazy plane (dask/zarr
    over a file) stays lazy: it is read from the file, not from the layer."""
    return np.array(plane, copy=True) if isinstance(plane, np.ndarray) else plane


def output_units(layer: Any) -> tuple[str, str]:
    """The units of the (Y, X) axes of ``layer``, for the layers laid over it."""
    units = getattr(layer, "units", None)
    return (str(units[-2]), str(units[-1])) if units is not None and len(units) >= 2 else ("pixel", "pixel")


def place_over(layer: Any, y: int, x: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(scale, translate) of a layer whose pixel (0, 0) is pixel (y, x) of ``layer`` (same pixel size)."""
    scale = tuple(float(s) for s in layer.scale[-2:])
    translate = tuple(float(t) + o * s for t, o, s in zip(layer.translate[-2:], (y, x), scale, strict=True))
    return scale, translate
