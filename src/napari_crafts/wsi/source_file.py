"""The source of a whole-slide run: level 0 of a labels/fluorescence file (or GeoJSON nuclei) as a picklable,
lazy control source that dask.distributed workers read window by window (reopening the file by path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..generation.conditioning import parse_channel_roles
from ..generation.sources import FluorescenceSource, LabelsSource
from ..io.geojson import SUFFIXES as GEOJSON_SUFFIXES
from ..io.geojson import GeoJSONLabels
from ..io.slide import SlideRef, open_slide
from ..io.windows import WindowedArray


class SlideArray(WindowedArray):
    """One slide level as a picklable, lazy array-like: ``shape``, ``dtype`` and basic slicing.

    Each slice reads only its window through a :class:`SlideRef` (which reopens the file once per process),
    so a LabelsSource / FluorescenceSource over it can be shipped to dask.distributed workers.
    """

    def __init__(self, ref: SlideRef, shape: tuple[int, ...], dtype: Any) -> None:
        self.ref, self.shape, self.dtype = ref, tuple(int(s) for s in shape), np.dtype(dtype)
        self.path = ref.path

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        return self.ref.read(y, x, height, width)


def open_source(path: str | Path, *, mpp: float | None = None, kind: str | None = None,
                channels: str | None = None, tissue: Any = "auto") -> Any:
    """Level 0 of a labels or fluorescence file as a picklable control source.

    Only metadata is read (and, for fluorescence, the sample its normalisation limits come from). ``channels``
    gives fluorescence channels their roles ("DAPI=nuclear,FITC=cytoplasm", names as the file stores them);
    without it the roles are guessed from the names. ``tissue``: where the tissue is ("auto", "all", a mask file;
    ``generation.tissue``).
    """
    if Path(path).suffix.lower() in GEOJSON_SUFFIXES:
        return _geojson_source(Path(path), mpp, tissue)
    slide = open_slide(path, mpp=mpp, kind=kind)  # SlideError names the file and the problem
    if slide.mpp is None:
        raise ValueError(f"{slide.path}: the file does not say its pixel size; pass it with --mpp (µm/px, e.g. "
                         "--mpp 0.25 for 40x) so tiles are generated at the model's scale.")
    if slide.kind == "rgb":
        raise ValueError(f"{slide.path} is an RGB image; generate needs nuclear labels or fluorescence channels "
                         "(pass --kind labels or --kind channels if it was misread).")
    level0 = slide.levels[0]
    data = SlideArray(SlideRef(str(slide.path), 0, mpp=mpp, kind=slide.kind), level0.shape, level0.dtype)
    if slide.kind == "labels":
        if channels:
            raise ValueError(f"{slide.path} holds nuclear labels: --channels is for fluorescence channels.")
        return LabelsSource(data, name=slide.path.name, mpp=slide.mpp, tissue=tissue)
    names = slide.channel_names or [f"channel {i}" for i in range(level0.shape[0])]
    roles = parse_channel_roles(channels, names, name=slide.path.name) if channels else None
    return FluorescenceSource(data, roles=roles, channel_names=names, name=slide.path.name, mpp=slide.mpp,
                              tissue=tissue)


def _geojson_source(path: Path, mpp: float | None, tissue: Any) -> LabelsSource:
    """Nuclei polygons (QuPath GeoJSON, level-0 pixels) as a labels source, rasterised window by window."""
    if mpp is None:
        raise ValueError(f"{path}: GeoJSON does not say the slide's pixel size; pass it with --mpp (µm/px of "
                         "the slide the polygons were drawn on, e.g. 0.25 for 40x).")
    return LabelsSource(GeoJSONLabels(path), name=path.name, mpp=mpp, tissue=tissue)
