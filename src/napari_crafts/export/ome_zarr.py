"""Resumable chunk-wise OME-Zarr writing: create or reopen a store, write chunks, build the pyramid, finish.

NGFF 0.4 on zarr format 2, the combination QuPath/Bio-Formats and ome-zarr-py read.
Every level is a uint8 array (3, Y, X) — NGFF 0.4 wants the channel axis before the spatial ones — chunked
(3, chunk, chunk), so one chunk holds one RGB tile. Level l is level l-1 reduced by a 2×2 area mean (pixels
past an odd edge are left out of the mean, rounded half up); its scale is mpp·2^l.

Resuming: each level has a marker array (one 1×1 chunk per data chunk) in the private group
``_napari_crafts_progress``; a marker is written only after its data chunk, so a run killed in between
redoes that chunk. ``finish()`` flags the image complete (``attrs["napari_crafts"]["complete"]``) and then
drops the markers. The writer holds only strings and numbers and pickles for dask.distributed workers.
Stores are local folders (markers and existence checks use the file system).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.errors import NodeNotFoundError

from ..provenance import PROVENANCE_KEY, json_record
from .pyramid import DOWNSAMPLING, default_levels, level_shapes, mean_downsample_2x
from .safety import GENERATOR, PROGRESS_GROUP, ZARR_TEMPORARY, OutputExists, output_kind, remove_output

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams
    from zarr.core.common import JSON

#: Provenance keys that may differ between a run and its resumption (everything else must match).
RESUME_VOLATILE_KEYS = frozenset({"created", "complete"})
OMERO_CHANNEL_HEX = ("FF0000", "00FF00", "0000FF")
#: The record a store holds from its first moment (the full provenance replaces it when creation is done).
OWNERSHIP_MARK = {"generator": GENERATOR, "synthetic": True, "complete": False}
_CACHE: dict[tuple[str, str], Any] = {}  # per-process open zarr arrays, keyed by (store path, array path)


class StoreError(ValueError):
    """An output store that cannot be reopened or resumed; the message names it and what to do."""


def _compressor() -> Any:
    return Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)


def _array(path: str, name: str) -> Any:
    key = (path, name)
    if key not in _CACHE:
        _CACHE[key] = zarr.open_array(store=path, path=name, mode="r+", zarr_format=2)
    return _CACHE[key]


def forget_cached(path: str) -> None:
    """Drop this process's open arrays of the store at ``path`` (e.g. after it was removed and rewritten)."""
    for key in [k for k in _CACHE if k[0] == path]:
        del _CACHE[key]


@dataclass(frozen=True)
class OmeZarrWriter:
    """Chunk-wise writer of one NGFF multiscale RGB image; picklable, reopens the store lazily per process."""

    path: str
    shape_yx: tuple[int, int]
    chunk: int
    levels: int
    mpp: float | None

    # geometry --------------------------------------------------------------------------------------
    def level_shape(self, level: int) -> tuple[int, int]:
        if not 0 <= level < self.levels:
            raise IndexError(f"No level {level}: this image has levels 0 to {self.levels - 1}.")
        return level_shapes(self.shape_yx, self.levels)[level]

    def grid(self, level: int) -> tuple[int, int]:
        """(rows, columns) of chunks at ``level``."""
        h, w = self.level_shape(level)
        return -(-h // self.chunk), -(-w // self.chunk)

    def chunk_box(self, level: int, cy: int, cx: int) -> tuple[int, int, int, int]:
        """Pixel box (y0, x0, y1, x1) of chunk (cy, cx) of ``level``; edge chunks are smaller."""
        ny, nx = self.grid(level)
        if not (0 <= cy < ny and 0 <= cx < nx):
            raise IndexError(f"No chunk ({cy}, {cx}) at level {level}: the grid there is {ny}×{nx}.")
        h, w = self.level_shape(level)
        c = self.chunk
        return cy * c, cx * c, min((cy + 1) * c, h), min((cx + 1) * c, w)

    # data ------------------------------------------------------------------------------------------
    def write_chunk(self, level: int, cy: int, cx: int, rgb: np.ndarray) -> None:
        """Write exactly chunk (cy, cx) of ``level`` from an (h, w, 3) uint8 array, then mark it done."""
        y0, x0, y1, x1 = self.chunk_box(level, cy, cx)
        rgb = np.asarray(rgb)
        if rgb.shape != (y1 - y0, x1 - x0, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"Chunk ({cy}, {cx}) of level {level} needs a {(y1 - y0, x1 - x0, 3)} uint8 array, "
                f"got {rgb.shape} {rgb.dtype}."
            )
        _array(self.path, str(level))[:, y0:y1, x0:x1] = np.ascontiguousarray(rgb.transpose(2, 0, 1))
        _array(self.path, f"{PROGRESS_GROUP}/{level}")[cy, cx] = 1

    def read_region(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) × [x0, x1) of ``level`` as (h, w, 3) uint8."""
        return np.ascontiguousarray(np.asarray(_array(self.path, str(level))[:, y0:y1, x0:x1]).transpose(1, 2, 0))

    def _markers(self, level: int) -> Path | None:
        folder = Path(self.path, PROGRESS_GROUP, str(level))
        return folder if (folder / ".zarray").is_file() else None

    def chunk_done(self, level: int, cy: int, cx: int) -> bool:
        """True only if the chunk's data and then its marker were written (or the image is complete).

        Markers are read as files (zarr v2 key ``<cy>/<cx>``, one byte): an empty file left by a kill
        reads as not done, and scanning a whole level stays fast.
        """
        self.chunk_box(level, cy, cx)
        folder = self._markers(level)
        if folder is None:
            return self.is_complete()
        try:
            return (folder / str(cy) / str(cx)).read_bytes() == b"\x01"
        except FileNotFoundError:
            return False

    def pending(self, level: int) -> list[tuple[int, int]]:
        """Chunks of ``level`` not yet done, in row-major order (40 000 chunks: well under a second)."""
        folder = self._markers(level)
        if folder is None:
            return [] if self.is_complete() else [(cy, cx) for cy, cx in np.ndindex(*self.grid(level))]
        done = np.zeros(self.grid(level), dtype=bool)
        for row in os.scandir(folder):
            if row.is_dir() and row.name.isdigit() and int(row.name) < done.shape[0]:
                for f in os.scandir(row.path):
                    if f.name.isdigit() and int(f.name) < done.shape[1] and f.stat().st_size == 1:
                        done[int(row.name), int(f.name)] = True
        return [(int(cy), int(cx)) for cy, cx in np.argwhere(~done)]

    # pyramid ---------------------------------------------------------------------------------------
    def build_level(self, level: int, cy: int, cx: int) -> None:
        """Compute chunk (cy, cx) of ``level`` ≥ 1 from the 2×2 chunks below it, which must be done."""
        if level < 1:
            raise ValueError("Level 0 is generated, not built: use write_chunk.")
        y0, x0, y1, x1 = self.chunk_box(level, cy, cx)
        ny, nx = self.grid(level - 1)
        missing = [
            (sy, sx)
            for sy in range(2 * cy, min(2 * cy + 2, ny))
            for sx in range(2 * cx, min(2 * cx + 2, nx))
            if not self.chunk_done(level - 1, sy, sx)
        ]
        if missing:
            raise RuntimeError(f"Cannot build chunk ({cy}, {cx}) of level {level}: level {level - 1} chunks "
                               f"{missing} are not written yet.")
        h, w = self.level_shape(level - 1)
        src = self.read_region(level - 1, 2 * y0, 2 * x0, min(2 * y1, h), min(2 * x1, w))
        self.write_chunk(level, cy, cx, mean_downsample_2x(src))

    def iter_build_pyramid(self) -> Iterator[tuple[int, int, int]]:
        """Build every level ≥ 1 chunk that is not done, in order; yields (level, cy, cx) after each."""
        for level in range(1, self.levels):
            for cy, cx in self.pending(level):
                self.build_level(level, cy, cx)
                yield level, cy, cx

    def build_pyramid(self) -> None:
        """All reduced levels, sequentially (the distributed runner calls build_level per chunk instead)."""
        for _ in self.iter_build_pyramid():
            pass

    # completion ------------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        return dict(_attrs(zarr.open_group(self.path, mode="r", zarr_format=2))[PROVENANCE_KEY])

    def is_complete(self) -> bool:
        return bool(self.provenance().get("complete", False))

    def finish(self) -> None:
        """Check every chunk is done, flag the image complete, then remove the progress markers."""
        left = {lv: len(p) for lv in range(self.levels) if (p := self.pending(lv))}
        if left:
            raise RuntimeError(f"Cannot finish {self.path}: chunks still missing per level {left}.")
        root = zarr.open_group(self.path, mode="r+", zarr_format=2)
        root.attrs[PROVENANCE_KEY] = {**_attrs(root)[PROVENANCE_KEY], "complete": True}
        if PROGRESS_GROUP in root:
            del root[PROGRESS_GROUP]
        for leftover in Path(self.path).rglob("*.partial"):  # zarr's temporary files from killed writes
            if ZARR_TEMPORARY.search(leftover.name) and not leftover.is_symlink():
                leftover.unlink()
        forget_cached(self.path)


def _attrs(node: zarr.Group) -> dict[str, Any]:
    """A group's attributes as plain JSON (zarr types them as a union of every JSON value)."""
    return node.attrs.asdict()


def _ngff_attrs(shape_yx: tuple[int, int], levels: int, mpp: float | None, channel_names: Sequence[str],
                name: str) -> dict[str, Any]:
    unit = {"unit": "micrometer"} if mpp is not None else {}
    base = 1.0 if mpp is None else float(mpp)
    multiscale = {
        "version": "0.4",
        "name": name,
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit},
                 {"name": "x", "type": "space", **unit}],
        "datasets": [
            {"path": str(lv),
             "coordinateTransformations": [{"type": "scale", "scale": [1.0, base * 2**lv, base * 2**lv]}]}
            for lv in range(levels)
        ],
        "type": "mean",
        "metadata": {"description": DOWNSAMPLING},
    }
    omero = {
        "version": "0.4",
        "name": name,
        "channels": [
            {"label": label, "color": color, "active": True, "coefficient": 1.0, "family": "linear",
             "inverted": False, "window": {"min": 0, "max": 255, "start": 0, "end": 255}}
            for label, color in zip(channel_names, OMERO_CHANNEL_HEX, strict=False)
        ],
        "rdefs": {"model": "color", "defaultZ": 0, "defaultT": 0},
    }
    return {"multiscales": [multiscale], "omero": omero}


def create_ome_zarr(path: str | os.PathLike[str], shape_yx: tuple[int, int], *, mpp: float | None,
                    provenance: dict[str, Any], chunk: int = 512, levels: int | None = None,
                    overwrite: bool = False, resume: bool = False, channel_names: Sequence[str] = ("R", "G", "B"),
                    name: str = "synthetic H&E (napari-crafts)") -> OmeZarrWriter:
    """Create an empty NGFF 0.4 multiscale RGB store (zarr v2) ready for chunk-wise writing.

    An existing ``path`` is refused unless ``overwrite`` (start again) or ``resume`` (reopen it, after
    checking that it was made with the same settings; see :func:`open_ome_zarr_for_resume`).
    """
    spath = os.fspath(path)
    if resume and os.path.exists(spath):
        return open_ome_zarr_for_resume(spath, shape_yx, mpp=mpp, provenance=provenance, chunk=chunk, levels=levels,
                                        channel_names=channel_names)
    shape_yx = (int(shape_yx[0]), int(shape_yx[1]))
    if min(shape_yx) < 1:
        raise ValueError(f"Image is empty ({shape_yx[0]}×{shape_yx[1]} px).")
    if chunk < 2:
        raise ValueError(f"Chunk size must be at least 2 px, got {chunk}.")
    if len(channel_names) != 3:
        raise ValueError(f"An RGB image needs 3 channel names, got {list(channel_names)}.")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"Pixel size must be positive (µm/px) or None, got {mpp}.")
    n = default_levels(shape_yx, chunk) if levels is None else int(levels)
    if n < 1:
        raise ValueError(f"Need at least one level, got {n}.")
    record = {**json_record(provenance), "mpp": None if mpp is None else float(mpp), "complete": False}
    if os.path.lexists(spath):
        if not overwrite:
            raise OutputExists(f"{spath} already exists: pass --resume to continue it, or use --overwrite to "
                               "replace it.")
        remove_output(spath, kind="ome-zarr")  # only a store napari-crafts wrote (safety.check_output's rule)
    forget_cached(spath)

    # the ownership mark goes in with the group itself: a store cut short while being created is still ours
    mark: dict[str, Any] = {PROVENANCE_KEY: OWNERSHIP_MARK}
    root = zarr.open_group(spath, mode="w-", zarr_format=2, attributes=mark)
    v2: dict[str, JSON] = {"name": "v2", "separator": "/"}
    config: ArrayConfigParams = {"order": "C", "write_empty_chunks": True}
    progress = root.create_group(PROGRESS_GROUP)
    for lv, (h, w) in enumerate(level_shapes(shape_yx, n)):
        root.create_array(str(lv), shape=(3, h, w), chunks=(3, chunk, chunk), dtype="uint8", fill_value=0,
                          compressors=_compressor(), chunk_key_encoding=v2, config=config)
        progress.create_array(str(lv), shape=(-(-h // chunk), -(-w // chunk)), chunks=(1, 1), dtype="uint8",
                              fill_value=0, compressors=None, chunk_key_encoding=v2)
    # the full attributes last: a store whose creation was cut short has no image metadata and cannot be resumed
    root.attrs.update({**_ngff_attrs(shape_yx, n, mpp, channel_names, name), PROVENANCE_KEY: record})
    return OmeZarrWriter(spath, shape_yx, int(chunk), n, None if mpp is None else float(mpp))


def open_ome_zarr(path: str | os.PathLike[str]) -> OmeZarrWriter:
    """The writer of an existing napari-crafts store, settings read from the store."""
    spath = os.fspath(path)
    try:
        root = zarr.open_group(spath, mode="r", zarr_format=2)
        attrs = _attrs(root)
        ms = attrs["multiscales"][0]
        record = attrs[PROVENANCE_KEY]
        level0 = root["0"]
        if not isinstance(level0, zarr.Array):
            raise TypeError("level 0 is a group")
        chunk = int(level0.chunks[1])
        shape = tuple(int(s) for s in level0.shape[1:])
    except (FileNotFoundError, NodeNotFoundError, KeyError, IndexError, TypeError, ValueError):
        if output_kind(spath) == "ome-zarr":
            raise StoreError(f"{spath}: its creation was cut short (no image metadata yet): use --overwrite to "
                             "start again.") from None
        raise StoreError(f"{spath} is not an OME-Zarr image napari-crafts wrote: choose another output path.") from None
    return OmeZarrWriter(spath, (shape[0], shape[1]), chunk, len(ms["datasets"]), record.get("mpp"))


def open_ome_zarr_for_resume(path: str | os.PathLike[str], shape_yx: tuple[int, int], *, mpp: float | None,
                             provenance: dict[str, Any] | None, chunk: int = 512, levels: int | None = None,
                             channel_names: Sequence[str] = ("R", "G", "B")) -> OmeZarrWriter:
    """Reopen a store to continue writing; raise StoreError naming the first setting that differs.

    Provenance keys in RESUME_VOLATILE_KEYS (e.g. "created") may differ; ``provenance=None`` skips that check.
    The stored provenance is kept as it was.
    """
    writer = open_ome_zarr(path)
    stored = writer.provenance()
    omero = _attrs(zarr.open_group(writer.path, mode="r")).get("omero", {})
    labels = [c.get("label") for c in omero.get("channels", [])]
    wanted_levels = default_levels((int(shape_yx[0]), int(shape_yx[1])), chunk) if levels is None else int(levels)
    checks = [
        ("shape", tuple(writer.shape_yx), (int(shape_yx[0]), int(shape_yx[1]))),
        ("chunk", writer.chunk, int(chunk)),
        ("levels", writer.levels, wanted_levels),
        ("mpp", writer.mpp, None if mpp is None else float(mpp)),
        ("channel_names", labels, list(channel_names)),
    ]
    if provenance is not None:
        new = json_record(provenance)
        for key in sorted((set(stored) | set(new)) - RESUME_VOLATILE_KEYS - {"mpp"}):
            checks.append((f"provenance '{key}'", stored.get(key), new.get(key)))
    for setting, have, want in checks:
        if have != want:
            raise StoreError(f"Cannot resume {writer.path}: {setting} differs (store has {have!r}, this run has "
                             f"{want!r}). Rerun with the original settings, or use --overwrite to start again.")
    return writer


def save_ome_zarr(path: str | os.PathLike[str], rgb: np.ndarray, *, mpp: float | None, provenance: dict[str, Any],
                  chunk: int = 512, overwrite: bool = False) -> OmeZarrWriter:
    """Write an in-memory RGB image (e.g. a generated region) as a complete OME-Zarr pyramid."""
    writer = create_ome_zarr(path, rgb.shape[:2], mpp=mpp, provenance=provenance, chunk=chunk, overwrite=overwrite)
    rows, cols = writer.grid(0)
    for cy in range(rows):
        for cx in range(cols):
            y0, x0, y1, x1 = writer.chunk_box(0, cy, cx)
            writer.write_chunk(0, cy, cx, rgb[y0:y1, x0:x1])
    writer.build_pyramid()
    writer.finish()
    return writer
