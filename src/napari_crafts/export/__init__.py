"""OME-Zarr and pyramidal OME-TIFF output for synthetic slides, with provenance and resumable progress.

The public face of three modules, whose names it re-exports (import from here):

- :mod:`.pyramid`      level count and shapes, the 2×2 area mean between levels;
- :mod:`.ome_zarr`     the resumable chunk-wise OME-Zarr writer (NGFF 0.4, zarr v2) and its done markers;
- :mod:`.ome_tiff`     pyramidal OME-TIFF writing, also from a finished OME-Zarr;

and reads the provenance back from either format (:func:`read_provenance`, :func:`is_complete`).
"""

from __future__ import annotations

import os
from typing import Any

from ..provenance import PROVENANCE_KEY, read_record
from .ome_tiff import TIFF_NAMESPACE, ome_zarr_to_tiff, write_pyramidal_tiff
from .ome_zarr import (
    OMERO_CHANNEL_HEX,
    PROGRESS_GROUP,
    RESUME_VOLATILE_KEYS,
    OmeZarrWriter,
    create_ome_zarr,
    forget_cached,
    open_ome_zarr,
    open_ome_zarr_for_resume,
    save_ome_zarr,
)
from .pyramid import DOWNSAMPLING, default_levels, level_shapes, mean_downsample_2x

__all__ = [
    "OMERO_CHANNEL_HEX", "DOWNSAMPLING", "PROGRESS_GROUP", "PROVENANCE_KEY", "RESUME_VOLATILE_KEYS", "TIFF_NAMESPACE",
    "OmeZarrWriter", "create_ome_zarr", "default_levels", "forget_cached", "is_complete", "level_shapes",
    "mean_downsample_2x", "ome_zarr_to_tiff", "open_ome_zarr", "open_ome_zarr_for_resume", "read_provenance",
    "save_ome_zarr", "write_pyramidal_tiff",
]


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance dict stored in a napari-crafts OME-Zarr, OME-TIFF or PNG; None if there is none
    (``provenance.read_record``, the one reader)."""
    return read_record(path)


def is_complete(path: str | os.PathLike[str]) -> bool:
    """Whether a napari-crafts OME-Zarr store was finished (False for unfinished or foreign stores)."""
    prov = read_provenance(path)
    return bool(prov and prov.get("complete"))
