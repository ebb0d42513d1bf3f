"""napari reader (npe2): slides, (OME-)TIFFs and OME-Zarr as lazy multiscale layers in µm; thin over slide.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .io.slide import Slide, is_supported, open_slide

PathOrPaths = str | Path | Sequence[str | Path]
LayerDataTuple = tuple[Any, dict[str, Any], str]
NO_MPP_WARNING = ("{name}: the file has no pixel size; opened in pixels. "
                  "Set µm/px with Plugins › napari-crafts › Pixel size.")


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerDataTuple]] | None:
    """The reader for one supported path (by name; nothing is opened here), else None."""
    if not isinstance(path, (str, Path)):
        if len(path) != 1:
            return None
        path = path[0]
    if str(path).lower().endswith(".geojson"):
        return read_geojson
    return read_slide if is_supported(path) else None


def _one(path: PathOrPaths) -> Path:
    """The path napari gives a reader: one path, or a list of one (napari_get_reader refused longer lists)."""
    return Path(path if isinstance(path, (str, Path)) else path[0])


def read_geojson(path: PathOrPaths) -> list[LayerDataTuple]:
    """Nuclei polygons (QuPath GeoJSON, level-0 px) as a lazy multiscale Labels layer, rasterised on view."""
    from .io.geojson import geojson_levels

    path = _one(path)
    levels = geojson_levels(path)  # reads the polygons; nothing is rasterised until napari shows it
    name = path.name.removesuffix(path.suffix)
    from napari.utils.notifications import show_info

    show_info(f"{path.name}: nuclei polygons in pixels; set µm/px with Plugins › napari-crafts › Pixel size.")
    meta = {"napari_crafts": {"path": str(path), "mpp": None, "kind": "labels", "format": "geojson"}}
    return [(levels if len(levels) > 1 else levels[0], {"name": name, "multiscale": len(levels) > 1,
                                                         "metadata": meta}, "labels")]


def read_slide(path: PathOrPaths) -> list[LayerDataTuple]:
    """Open ``path`` lazily and return one layer (or one per channel, via ``channel_axis``)."""
    slide = open_slide(_one(path))
    layer = slide_layer_data(slide)
    if slide.mpp is None:
        from napari.utils.notifications import show_warning

        show_warning(NO_MPP_WARNING.format(name=layer[1]["name"]))
    return [layer]


def layer_name(path: Path) -> str:
    """File name without its image suffixes ('a.ome.tif' → 'a', 'b.ome.zarr' → 'b')."""
    name = path.name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def slide_layer_data(slide: Slide) -> LayerDataTuple:
    """The LayerDataTuple of a slide: multiscale when it has levels, scaled in µm when the pixel size is known."""
    name = layer_name(slide.path)
    # A napari-crafts output carries its provenance record: keep it, so the layer still says it is synthetic.
    record = slide.properties.get("napari_crafts")
    info = {**(record if isinstance(record, dict) else {}), "path": str(slide.path), "mpp": slide.mpp,
            "kind": slide.kind}
    unit = "µm" if slide.mpp is not None else "pixel"
    data = slide.levels if len(slide.levels) > 1 else slide.levels[0]
    kwargs: dict[str, Any] = {
        "name": name,
        "multiscale": len(slide.levels) > 1,
        "scale": slide.scale,
        "units": (unit, unit),
        "metadata": {"napari_crafts": info},
    }
    if slide.kind == "labels":
        return data, kwargs, "labels"
    if slide.kind == "rgb":
        return data, {**kwargs, "rgb": True}, "image"
    n = slide.levels[0].shape[0]
    names = slide.channel_names or ([name] if n == 1 else [f"{name} [{i}]" for i in range(n)])
    colors = slide.properties.get("channel_colors") or [None] * n
    per_channel = [{"napari_crafts": {**info, "channel": names[i], "channel_index": i}} for i in range(n)]
    return data, {**kwargs, "channel_axis": 0, "name": names, "metadata": per_channel,
                  "colormap": [channel_colormap(names[i], colors[i], i) for i in range(n)],
                  "contrast_limits": contrast_limits(slide.levels[-1]), "blending": "additive"}, "image"


#: Colours (0-1 RGB) for channels whose file gives none: blue for the nuclear stain, then these in turn.
CHANNEL_LAYER_RGB = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0))
#: Side of the window of the coarsest level that contrast limits are computed on (read once, on open).
CONTRAST_SAMPLE = 1024


def channel_colormap(name: str, color: Any, index: int) -> Any:
    """A black→colour napari colormap: the file's colour, else blue for a nuclear stain, else the next default."""
    from napari.utils.colormaps import Colormap

    from .generation.conditioning import guess_role

    if color is not None and any(color):
        rgb = tuple(c / 255 for c in color)
    elif guess_role(name) == "nuclear":
        rgb = (0.0, 0.0, 1.0)
    else:
        rgb = CHANNEL_LAYER_RGB[index % len(CHANNEL_LAYER_RGB)]
    return Colormap([(0.0, 0.0, 0.0, 1.0), (*rgb, 1.0)], name=f"{name} ({', '.join(f'{c:.2f}' for c in rgb)})")


def contrast_limits(level: Any) -> list[tuple[float, float]]:
    """Per-channel (low, high) display limits: the 0.5 and 99.8 percentiles of a window of a (C, Y, X) level."""
    import numpy as np

    _, h, w = level.shape
    y0, x0 = max(0, (h - CONTRAST_SAMPLE) // 2), max(0, (w - CONTRAST_SAMPLE) // 2)
    window = np.asarray(level[:, y0 : y0 + CONTRAST_SAMPLE, x0 : x0 + CONTRAST_SAMPLE])
    limits = []
    for plane in window:
        lo, hi = (float(v) for v in np.percentile(plane, (0.5, 99.8)))
        limits.append((lo, hi) if hi > lo else (lo, lo + 1.0))
    return limits
