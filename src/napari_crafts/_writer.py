"""napari writers (npe2): a synthetic H&E layer as OME-TIFF, OME-Zarr or PNG, with its provenance record.

File › Save Selected Layers (choose "napari-crafts" in the dialog's file types) and the widgets' Save… button
both end here. Every file says it is synthetic when the layer does: the OME-TIFF in an OME MapAnnotation, the
OME-Zarr in its attributes, the PNG in text chunks (``napari_crafts``: the record as JSON; ``Description``: its
warning). Pixels are written as they are and losslessly (zlib, PNG): a layer made here already carries the
invisible watermark (``export.watermark``; its record's ``"watermark"`` entry), which is never added a second
time; a layer whose record has no such entry is written unmarked, its record says so, and so does a warning.
The output rule of
``export.safety`` applies: never over the layer's source image or the file the layer was read from, and an
existing file is replaced only when napari-crafts wrote it (the save dialog has already asked the user).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .provenance import PROVENANCE_KEY, json_record

#: What a file's record says when the layer it was saved from had no watermark entry (e.g. an output made
#: before watermarking): the writer stores pixels as they are and never marks them itself.
NOT_MARKED = "saved by the napari writer from a layer without a watermark entry (its pixels were not marked)"
FORMATS = {".ome.tif": "ome-tiff", ".ome.tiff": "ome-tiff", ".tif": "ome-tiff", ".tiff": "ome-tiff",
           ".ome.zarr": "ome-zarr", ".zarr": "ome-zarr", ".png": "png"}


class SaveError(ValueError):
    """A layer that cannot be saved there; the message names the path and what to do."""


def write_ome_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer: one RGB image layer → pyramidal OME-TIFF (zlib) with the provenance record."""
    return save_layer_data(path, data, meta, kind="ome-tiff")


def write_ome_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer: one RGB image layer → OME-Zarr pyramid with the provenance record."""
    return save_layer_data(path, data, meta, kind="ome-zarr")


def write_png(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer: one RGB image layer → PNG with the provenance record in text chunks."""
    return save_layer_data(path, data, meta, kind="png")


def format_for(path: str | os.PathLike[str]) -> str:
    """The output kind a file name asks for ('ome-tiff', 'ome-zarr' or 'png')."""
    name = os.fspath(path).lower()
    for suffix, kind in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return kind
    raise SaveError(f"{path}: choose a name ending in .ome.tif, .ome.zarr or .png (synthetic H&E is saved with "
                    "its provenance in these formats).")


def save_layer(path: str | os.PathLike[str], layer: Any) -> list[str]:
    """Save a napari layer (the widgets' Save…); returns the paths written."""
    meta = {"name": layer.name, "scale": tuple(layer.scale), "units": tuple(str(u) for u in layer.units),
            "metadata": layer.metadata, "rgb": getattr(layer, "rgb", False)}
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return save_layer_data(os.fspath(path), data, meta, kind=format_for(path))


def save_layer_data(path: str, data: Any, meta: dict[str, Any], *, kind: str) -> list[str]:
    """Write ``data`` (Y, X, 3|4) or a stack (N, Y, X, 3|4) of uint8 RGB; a stack becomes one file per image."""
    from .export.safety import check_output

    arr = data[0] if isinstance(data, list) else data  # a multiscale layer: its full resolution
    if arr.ndim not in (3, 4) or arr.shape[-1] not in (3, 4) or np.dtype(arr.dtype) != np.uint8:
        raise SaveError(f"'{meta.get('name', 'layer')}' is not an 8-bit RGB image (shape {tuple(arr.shape)}, "
                        f"{arr.dtype}): napari-crafts saves synthetic H&E; use napari's own writer for other layers.")
    record = provenance_of(meta)
    if not record:
        raise SaveError(f"'{meta.get('name', 'layer')}' carries no napari-crafts provenance (not a synthetic H&E "
                        "layer made here): save it with napari's own writer.")
    inputs = protected_paths(meta)
    images = [arr] if arr.ndim == 3 else [arr[i] for i in range(arr.shape[0])]
    targets = [Path(path)] if len(images) == 1 else [_numbered(Path(path), i) for i in range(len(images))]
    for target in targets:  # all checked before anything is written
        check_output(target, kind=kind, inputs=inputs, overwrite=True, flag="Save")
    write: Callable[[Path, np.ndarray, float | None, dict[str, Any]], None] = _WRITERS[kind]
    mpp = layer_mpp(meta)
    own = arr.ndim == 4 and isinstance(record.get("images"), list) and len(record["images"]) == len(images)
    records = [{**record["images"][i], "stack_index": i} if own else dict(record) for i in range(len(images))]
    if unmarked := [r for r in records if "watermark" not in r]:
        from napari.utils.notifications import show_warning

        from .export.watermark import describe_no_watermark

        for r in unmarked:
            r["watermark"] = describe_no_watermark(NOT_MARKED)
        show_warning(f"'{meta.get('name', 'layer')}' has no watermark in its record: saved without one in its "
                     "pixels (its provenance still says synthetic).")
    for target, image, image_record in zip(targets, images, records, strict=True):
        write(target, np.asarray(image), mpp, image_record)
    return [str(t) for t in targets]


def provenance_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The layer's provenance record (empty when the layer is not a napari-crafts output)."""
    metadata = meta.get("metadata") or {}
    record = metadata.get(PROVENANCE_KEY) if isinstance(metadata, dict) else None
    return json_record(record) if isinstance(record, dict) and record.get("synthetic") else {}


def protected_paths(meta: dict[str, Any]) -> list[str]:
    """Files a save must never write over: the file the layer was read from and the run's source image."""
    metadata = meta.get("metadata") or {}
    record = metadata.get(PROVENANCE_KEY) if isinstance(metadata, dict) else None
    paths = []
    if isinstance(record, dict):
        paths.append(record.get("path"))
        source = record.get("source")
        if isinstance(source, dict):
            paths += [source.get("path"), source.get("file")]
    return [str(p) for p in paths if isinstance(p, (str, os.PathLike)) and str(p)]


def layer_mpp(meta: dict[str, Any]) -> float | None:
    """µm per pixel of the layer: its scale when its units are µm, else the record's own, else its source's (images
    made from a prompt: the model's).

    The last is the µm/px typed in a dock for a source in pixel units: the output lies on the source's pixel grid
    (``place_over``), so it has the source's pixel size even where the layers' scale does not say so.
    """
    units = [str(u) for u in meta.get("units") or ()]
    scale = meta.get("scale")
    if units and units[-1] in ("micrometer", "µm", "um") and scale is not None:
        return float(scale[-1])
    metadata = meta.get("metadata") or {}
    record = metadata.get(PROVENANCE_KEY) if isinstance(metadata, dict) else None
    if not isinstance(record, dict):
        return None
    source, model = record.get("source"), record.get("model")
    made_from_text = record.get("mode") == "prompt"  # at the model's pixel size
    for mpp in (record.get("mpp"), source.get("mpp") if isinstance(source, dict) else None,
                model.get("mpp") if made_from_text and isinstance(model, dict) else None):
        if isinstance(mpp, (int, float)) and not isinstance(mpp, bool) and mpp > 0:
            return float(mpp)
    return None


def with_extension(path: str | os.PathLike[str]) -> str:
    """``path`` as typed in a save dialog, with ``.ome.tif`` added when it names none of :data:`FORMATS`."""
    name = os.fspath(path)
    return name if any(name.lower().endswith(suffix) for suffix in FORMATS) else name + ".ome.tif"


def default_file_name(layer_name: str) -> str:
    """The save dialog's proposed file name for a layer: its name in safe characters, ``.ome.tif``."""
    import re

    stem = re.sub(r"[^\w.-]+", "_", layer_name.replace("&", "")).strip("._") or "synthetic_HE"
    return stem + ".ome.tif"


def _numbered(path: Path, i: int) -> Path:
    name = path.name
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return path.with_name(f"{name[: -len(suffix)]}-{i + 1}{name[-len(suffix):]}")
    return path.with_name(f"{name}-{i + 1}")


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., :3])


def _write_tiff(path: Path, image: np.ndarray, mpp: float | None, record: dict[str, Any]) -> None:
    from .export import write_pyramidal_tiff

    write_pyramidal_tiff(path, _rgb(image), mpp=mpp, provenance=record, compression="zlib", overwrite=True)


def _write_zarr(path: Path, image: np.ndarray, mpp: float | None, record: dict[str, Any]) -> None:
    from .export import save_ome_zarr

    save_ome_zarr(path, _rgb(image), mpp=mpp, provenance=record, overwrite=True)


def _write_png(path: Path, image: np.ndarray, mpp: float | None, record: dict[str, Any]) -> None:
    from .export.png import save_png

    save_png(path, image, {**record, "mpp": mpp}, mpp=mpp)


_WRITERS: dict[str, Callable[[Path, np.ndarray, float | None, dict[str, Any]], None]] = {
    "ome-tiff": _write_tiff, "ome-zarr": _write_zarr, "png": _write_png,
}
