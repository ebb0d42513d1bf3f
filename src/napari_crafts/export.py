"""OME-Zarr and pyramidal OME-TIFF output for synthetic slides, with provenance and resumable progress.

OME-Zarr: NGFF 0.4 on zarr format 2, the combination QuPath/Bio-Formats and ome-zarr-py read.
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

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from numcodecs import Blosc
from zarr.errors import NodeNotFoundError

PROVENANCE_KEY = "napari_crafts"
PROGRESS_GROUP = "_napari_crafts_progress"
#: Provenance keys that may differ between a run and its resumption (everything else must match).
RESUME_VOLATILE_KEYS = frozenset({"created", "complete"})
TIFF_NAMESPACE = "napari-crafts/provenance"  # OME MapAnnotation namespace holding the JSON
CHANNEL_COLORS = ("FF0000", "00FF00", "0000FF")
DOWNSAMPLING = "2x2 area mean of the previous level, pixels past odd edges left out, rounded half up"
_CACHE: dict[tuple[str, str], Any] = {}  # per-process open zarr arrays, keyed by (store path, array path)


# --------------------------------------------------------------------------------------------- geometry


def default_levels(shape_yx: tuple[int, int], chunk: int) -> int:
    """Number of levels: halve until the largest side is smaller than ``chunk`` (at least 1)."""
    n, side = 1, max(shape_yx)
    while side >= chunk:
        side, n = -(-side // 2), n + 1
    return n


def level_shapes(shape_yx: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """(Y, X) of each level; odd sides round up."""
    return [(-(-shape_yx[0] // 2**lv), -(-shape_yx[1] // 2**lv)) for lv in range(levels)]


def mean_downsample_2x(block: np.ndarray) -> np.ndarray:
    """2×2 area mean over the first two axes of a uint8 (h, w, ...) block; odd edges average what exists."""
    h, w = block.shape[:2]
    if h % 2 or w % 2:  # edge replication == mean of the pixels that exist
        block = np.pad(block, [(0, h % 2), (0, w % 2)] + [(0, 0)] * (block.ndim - 2), mode="edge")
    h2, w2 = block.shape[0] // 2, block.shape[1] // 2
    s = block.reshape(h2, 2, w2, 2, *block.shape[2:]).sum(axis=(1, 3), dtype=np.uint16)
    return ((s + 2) // 4).astype(np.uint8)


# --------------------------------------------------------------------------------------------- OME-Zarr


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


def _jsonable(provenance: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(provenance))
    except (TypeError, ValueError) as err:
        raise TypeError(f"Provenance must be a JSON-able dict: {err}") from None


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
        return dict(zarr.open_group(self.path, mode="r", zarr_format=2).attrs[PROVENANCE_KEY])

    def is_complete(self) -> bool:
        return bool(self.provenance().get("complete", False))

    def finish(self) -> None:
        """Check every chunk is done, flag the image complete, then remove the progress markers."""
        left = {lv: len(p) for lv in range(self.levels) if (p := self.pending(lv))}
        if left:
            raise RuntimeError(f"Cannot finish {self.path}: chunks still missing per level {left}.")
        root = zarr.open_group(self.path, mode="r+", zarr_format=2)
        root.attrs[PROVENANCE_KEY] = {**root.attrs[PROVENANCE_KEY], "complete": True}
        if PROGRESS_GROUP in root:
            del root[PROGRESS_GROUP]
        for leftover in Path(self.path).rglob("*.partial"):  # zarr's temporary files from killed writes
            leftover.unlink()
        forget_cached(self.path)


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
            for label, color in zip(channel_names, CHANNEL_COLORS)
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
    record = {**_jsonable(provenance), "mpp": None if mpp is None else float(mpp), "complete": False}
    if os.path.exists(spath):
        if not overwrite:
            raise FileExistsError(f"{spath} already exists: pass --resume to continue it or --overwrite to replace it.")
        _remove_store(spath)
    forget_cached(spath)

    root = zarr.open_group(spath, mode="w-", zarr_format=2)
    v2 = {"name": "v2", "separator": "/"}
    progress = root.create_group(PROGRESS_GROUP)
    for lv, (h, w) in enumerate(level_shapes(shape_yx, n)):
        root.create_array(str(lv), shape=(3, h, w), chunks=(3, chunk, chunk), dtype="uint8", fill_value=0,
                          compressors=_compressor(), chunk_key_encoding=v2, config={"write_empty_chunks": True})
        progress.create_array(str(lv), shape=(-(-h // chunk), -(-w // chunk)), chunks=(1, 1), dtype="uint8",
                              fill_value=0, compressors=None, chunk_key_encoding=v2)
    # attributes last: a store whose creation was cut short has no provenance and cannot be resumed
    root.attrs.update({**_ngff_attrs(shape_yx, n, mpp, channel_names, name), PROVENANCE_KEY: record})
    return OmeZarrWriter(spath, shape_yx, int(chunk), n, None if mpp is None else float(mpp))


def _remove_store(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        if any(p.iterdir()) and not any((p / f).exists() for f in (".zgroup", ".zattrs", "zarr.json")):
            raise FileExistsError(f"{path} is a folder but not a zarr store: not deleting it; choose another path.")
        shutil.rmtree(p)
    else:
        p.unlink()


def open_ome_zarr(path: str | os.PathLike[str]) -> OmeZarrWriter:
    """The writer of an existing napari-crafts store, settings read from the store."""
    spath = os.fspath(path)
    try:
        root = zarr.open_group(spath, mode="r", zarr_format=2)
        attrs = root.attrs.asdict()
        ms = attrs["multiscales"][0]
        record = attrs[PROVENANCE_KEY]
        chunk = int(root["0"].chunks[1])
        shape = tuple(int(s) for s in root["0"].shape[1:])
    except (FileNotFoundError, NodeNotFoundError, KeyError, IndexError) as err:
        raise ValueError(f"{spath} is not a napari-crafts OME-Zarr store, or its creation was cut short "
                         f"({err!r}): use --overwrite to start again.") from None
    return OmeZarrWriter(spath, (shape[0], shape[1]), chunk, len(ms["datasets"]), record.get("mpp"))


def open_ome_zarr_for_resume(path: str | os.PathLike[str], shape_yx: tuple[int, int], *, mpp: float | None,
                             provenance: dict[str, Any] | None, chunk: int = 512, levels: int | None = None,
                             channel_names: Sequence[str] = ("R", "G", "B")) -> OmeZarrWriter:
    """Reopen a store to continue writing; raise ValueError naming the first setting that differs.

    Provenance keys in RESUME_VOLATILE_KEYS (e.g. "created") may differ; ``provenance=None`` skips that check.
    The stored provenance is kept as it was.
    """
    writer = open_ome_zarr(path)
    stored = writer.provenance()
    labels = [c.get("label") for c in zarr.open_group(writer.path, mode="r").attrs.get("omero", {}).get("channels", [])]
    wanted_levels = default_levels(tuple(shape_yx), chunk) if levels is None else int(levels)
    checks = [
        ("shape", tuple(writer.shape_yx), (int(shape_yx[0]), int(shape_yx[1]))),
        ("chunk", writer.chunk, int(chunk)),
        ("levels", writer.levels, wanted_levels),
        ("mpp", writer.mpp, None if mpp is None else float(mpp)),
        ("channel_names", labels, list(channel_names)),
    ]
    if provenance is not None:
        new = _jsonable(provenance)
        for key in sorted((set(stored) | set(new)) - RESUME_VOLATILE_KEYS - {"mpp"}):
            checks.append((f"provenance '{key}'", stored.get(key), new.get(key)))
    for setting, have, want in checks:
        if have != want:
            raise ValueError(f"Cannot resume {writer.path}: {setting} differs (store has {have!r}, this run has "
                             f"{want!r}). Rerun with the original settings, or use --overwrite to start again.")
    return writer


def is_complete(path: str | os.PathLike[str]) -> bool:
    """Whether a napari-crafts OME-Zarr store was finished (False for unfinished or foreign stores)."""
    prov = read_provenance(path)
    return bool(prov and prov.get("complete"))


# --------------------------------------------------------------------------------------------- TIFF


class _ChannelLast:
    """(3, Y, X) array seen as (Y, X, 3), sliced lazily."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.shape = (arr.shape[1], arr.shape[2], arr.shape[0])
        self.dtype = arr.dtype

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return np.moveaxis(np.asarray(self.arr[:, key[0], key[1]]), 0, -1)


def _tiles(arr: Any, tile: int) -> Iterator[np.ndarray]:
    h, w = arr.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            yield np.ascontiguousarray(np.asarray(arr[y : y + tile, x : x + tile]), dtype=np.uint8)


def _reduce_to_zarr(prev: Any, tile: int, store: str) -> Any:
    """Level ``prev`` reduced 2×2 into a temporary zarr array (Y/2, X/2, 3), one tile at a time."""
    h, w = prev.shape[:2]
    out = zarr.create_array(store=store, shape=(-(-h // 2), -(-w // 2), 3), chunks=(tile, tile, 3), dtype="uint8",
                            zarr_format=2, compressors=Blosc(cname="lz4", clevel=1))
    for y in range(0, out.shape[0], tile):
        for x in range(0, out.shape[1], tile):
            out[y : y + tile, x : x + tile] = mean_downsample_2x(
                np.asarray(prev[2 * y : min(2 * y + 2 * tile, h), 2 * x : min(2 * x + 2 * tile, w)])
            )
    return out


def write_pyramidal_tiff(path: str | os.PathLike[str], level0: Any, *, mpp: float | None, provenance: dict[str, Any],
                         tile: int = 512, compression: str = "jpeg", quality: int = 90,
                         reduced: Sequence[Any] | None = None, levels: int | None = None,
                         overwrite: bool = False) -> None:
    """Write a tiled pyramidal OME-TIFF (level 0 + SubIFD reductions) read by QuPath, Bio-Formats, tiffslide.

    ``level0`` is (Y, X, 3) uint8 array-like (numpy, dask, zarr) and is read one tile at a time.
    ``reduced`` gives the lower levels (each half the previous, rounded up); without it they are computed
    by 2×2 mean into a temporary zarr beside ``path``. JPEG is YCbCr 4:2:0 (like SVS); "zlib" is lossless.
    The file is written as ``<path>.partial`` and renamed when done, so a cancelled export leaves nothing.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists: use --overwrite to replace it.")
    if compression not in ("jpeg", "zlib", "none"):
        raise ValueError(f"TIFF compression must be 'jpeg', 'zlib' or 'none', got {compression!r}.")
    if tile <= 0 or tile % 16:
        raise ValueError(f"TIFF tile size must be a multiple of 16, got {tile}.")
    if len(level0.shape) != 3 or level0.shape[2] != 3:
        raise ValueError(f"Level 0 must be (Y, X, 3) RGB, got shape {tuple(level0.shape)}.")
    if np.dtype(level0.dtype) != np.uint8:
        raise ValueError(f"Level 0 must be uint8, got {level0.dtype}.")
    shape_yx = (int(level0.shape[0]), int(level0.shape[1]))
    if reduced is not None:
        n = 1 + len(reduced)
        want = level_shapes(shape_yx, n)
        got = [(int(a.shape[0]), int(a.shape[1])) for a in reduced]
        if got != want[1:]:
            raise ValueError(f"Reduced levels must halve each side, rounding up: expected {want[1:]}, got {got}.")
    else:
        n = default_levels(shape_yx, tile) if levels is None else int(levels)
    record = json.dumps({**_jsonable(provenance), "mpp": None if mpp is None else float(mpp)}, ensure_ascii=True)
    meta: dict[str, Any] = {
        "axes": "YXS",
        "Name": "synthetic H&E (napari-crafts)",
        "Description": "SYNTHETIC IMAGE generated by a diffusion model (napari-crafts); not a real tissue section.",
        "MapAnnotation": {"Namespace": TIFF_NAMESPACE, "Value": {PROVENANCE_KEY: record}},
    }
    if mpp is not None:
        meta.update(PhysicalSizeX=float(mpp), PhysicalSizeXUnit="µm",
                    PhysicalSizeY=float(mpp), PhysicalSizeYUnit="µm")
    opts: dict[str, Any] = {
        "photometric": "rgb",
        "tile": (tile, tile),
        "compression": None if compression == "none" else compression,
        "compressionargs": {"level": quality} if compression == "jpeg" else None,
        "software": "napari-crafts",
        "dtype": np.uint8,
    }

    def res(lv: int) -> dict[str, Any]:
        if mpp is None:
            return {"resolutionunit": "NONE"}
        per_cm = 1e4 / (float(mpp) * 2**lv)
        return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}

    partial = target.with_name(target.name + ".partial")
    try:
        with tempfile.TemporaryDirectory(prefix=".napari_crafts_tiff_", dir=target.resolve().parent) as tmp:
            pyramid = [level0, *(reduced or [])]
            for lv in range(len(pyramid), n):
                pyramid.append(_reduce_to_zarr(pyramid[-1], tile, f"{tmp}/{lv}"))
            with tifffile.TiffWriter(partial, bigtiff=True, ome=True) as tif:
                for lv, arr in enumerate(pyramid):
                    shape = (int(arr.shape[0]), int(arr.shape[1]), 3)
                    if lv == 0:
                        tif.write(_tiles(arr, tile), shape=shape, subifds=n - 1, metadata=meta, **res(0), **opts)
                    else:
                        tif.write(_tiles(arr, tile), shape=shape, subfiletype=1, **res(lv), **opts)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def ome_zarr_to_tiff(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, tile: int = 512,
                     compression: str = "jpeg", quality: int = 90, overwrite: bool = False) -> None:
    """Copy a finished napari-crafts OME-Zarr (all its levels and provenance) to a pyramidal OME-TIFF."""
    writer = open_ome_zarr(src)
    if not writer.is_complete():
        raise ValueError(f"{writer.path} is not finished (complete is not set): resume the generation first.")
    arrays = [_ChannelLast(zarr.open_array(store=writer.path, path=str(lv), mode="r")) for lv in range(writer.levels)]
    prov = {k: v for k, v in writer.provenance().items() if k != "complete"}
    write_pyramidal_tiff(dst, arrays[0], mpp=writer.mpp, provenance=prov, tile=tile, compression=compression,
                         quality=quality, reduced=arrays[1:], overwrite=overwrite)


# --------------------------------------------------------------------------------------------- provenance


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance dict stored in a napari-crafts OME-Zarr or TIFF; None if there is none."""
    spath = os.fspath(path)
    if os.path.isdir(spath):
        try:
            prov = zarr.open_group(spath, mode="r").attrs.get(PROVENANCE_KEY)
        except (FileNotFoundError, NodeNotFoundError):
            return None
        return dict(prov) if isinstance(prov, dict) else None
    with tifffile.TiffFile(spath) as tif:
        xml = tif.ome_metadata
    if not xml:
        return None
    for ann in ET.fromstring(xml).iter():
        if ann.tag.endswith("MapAnnotation") and ann.get("Namespace") == TIFF_NAMESPACE:
            for m in ann.iter():
                if m.tag.endswith("}M") and m.get("K") == PROVENANCE_KEY:
                    return json.loads(m.text or "null")
    return None


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
