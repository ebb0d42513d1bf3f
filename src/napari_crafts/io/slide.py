"""Slides and images as lazy dask pyramids with a µm scale (Qt-free, no torch).

One entry point, :func:`open_slide`, for whole-slide images (tiffslide: SVS, NDPI, SCN, BIF, pyramidal TIFF),
plain or OME-TIFFs (tifffile: labels, fluorescence, multichannel) and OME-Zarr (NGFF 0.4 / 0.5). Levels are
dask arrays with axes (Y, X) for labels, (Y, X, 3) for RGB and (C, Y, X) for channels; nothing is read until
a window is asked for. For dask.distributed workers, pass a :class:`SlideRef` (a path and a level): it pickles,
and each process reopens the file once through a small cache.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error
from typing import Any

import dask.array as da
import numpy as np

from ..provenance import PROVENANCE_KEY, record_from_ome_xml
from .windows import read_padded

KINDS = ("rgb", "labels", "channels")
#: Formats read through tiffslide (whole-slide TIFF flavours); .tif/.tiff go there when they hold RGB.
TIFFSLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff", ".qptiff")  # .qptiff: Akoya/PerkinElmer immunofluorescence (io.qptiff)
#: Formats only OpenSlide (or Bio-Formats) reads: refused with a clear message.
OPENSLIDE_ONLY = {".mrxs": "MIRAX (.mrxs)", ".vms": "Hamamatsu VMS (.vms)", ".vmu": "Hamamatsu VMU (.vmu)",
                  ".dcm": "DICOM (.dcm)"}
#: TIFF pixel sizes coarser than this (µm/px) are screen/print defaults (72 dpi …), not microscope scales.
_MAX_TIFF_MPP = 50.0
_UNIT_TO_UM = {"nm": 1e-3, "nanometer": 1e-3, "µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0,
               "\\u00B5m": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6}


class SlideError(ValueError):
    """A file that cannot be opened as a slide; the message names the file and what to do."""


@dataclass(frozen=True)
class Slide:
    """An opened slide: lazy levels (finest first), pixel size and what the pixels are."""

    path: Path
    levels: list[da.Array]
    mpp: float | None
    kind: str  # "rgb" (Y, X, 3), "labels" (Y, X) or "channels" (C, Y, X)
    channel_names: list[str] | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def level_shape(self, level: int = 0) -> tuple[int, int]:
        """(Y, X) of ``level``."""
        shape = self.levels[level].shape
        return (int(shape[1]), int(shape[2])) if self.kind == "channels" else (int(shape[0]), int(shape[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """(Y, X) of level 0."""
        return self.level_shape(0)

    @property
    def downsamples(self) -> list[float]:
        """Level-0 pixels per pixel of each level (mean of the Y and X ratios)."""
        h0, w0 = self.shape
        return [(h0 / h + w0 / w) / 2 for h, w in (self.level_shape(i) for i in range(len(self.levels)))]

    @property
    def scale(self) -> tuple[float, float]:
        """(Y, X) µm per level-0 pixel, or (1.0, 1.0) (pixels) when the pixel size is unknown."""
        return (self.mpp, self.mpp) if self.mpp is not None else (1.0, 1.0)

    def level_mpp(self, level: int) -> float | None:
        """µm per pixel of ``level`` (None when unknown)."""
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def read(self, level: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Pixels [y0, y0+height) × [x0, x0+width) of ``level``, zero outside the image.

        Returns (height, width) for labels, (height, width, 3) for RGB, (C, height, width) for channels.
        """
        if not 0 <= level < len(self.levels):
            raise SlideError(f"{self.path}: no level {level} (the slide has {len(self.levels)}).")
        if height < 0 or width < 0:
            raise ValueError(f"Window size must not be negative, got {height}×{width}.")
        try:  # synchronous compute: no nested distributed compute inside a worker's task
            return read_padded(self.levels[level], y0, x0, height, width, channels_last=self.kind != "channels",
                               read=lambda part: part.compute(scheduler="synchronous"))
        except SlideError:
            raise
        except Exception as err:  # noqa: BLE001 - one line naming the file and the place
            cause = (str(err).strip().splitlines() or [""])[0]
            raise SlideError(f"{self.path}: cannot read level {level} at y={y0}, x={x0} "
                             f"({type(err).__name__}: {cause}); the file may be damaged.") from err


# --------------------------------------------------------------------------------------------- opening


def is_supported(path: str | Path) -> bool:
    """Whether :func:`open_slide` may read ``path`` (by name; folders by their NGFF metadata): cheap."""
    p = Path(path)
    return p.suffix.lower() in TIFFSLIDE_SUFFIXES + TIFF_SUFFIXES or _is_zarr(p)


def open_slide(path: str | Path, *, mpp: float | None = None, kind: str | None = None) -> Slide:
    """Open a slide or image lazily; ``mpp`` (µm/px) overrides the file's pixel size, ``kind`` its kind."""
    p = Path(path).expanduser().absolute()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}.")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"Pixel size must be a positive number of µm/px, got {mpp}.")
    suffix = p.suffix.lower()
    if suffix in OPENSLIDE_ONLY:
        raise SlideError(f"{p}: {OPENSLIDE_ONLY[suffix]} slides need OpenSlide, which napari-crafts does not use; "
                         "convert to OME-TIFF (e.g. with QuPath or bfconvert) and open that.")
    if not p.exists():
        raise SlideError(f"{p}: no such file or folder.")
    complaints: list[str] = []  # what tifffile logged while reading the structure (a damaged file)
    try:
        with _tifffile_complaints(complaints):
            if _is_zarr(p):
                levels, file_mpp, rgb_like, names, props = _open_ngff(p)
            elif suffix in TIFFSLIDE_SUFFIXES:
                levels, file_mpp, rgb_like, names, props = _open_tiffslide(p)
            elif suffix in TIFF_SUFFIXES or _is_tiff(p):  # by content too: .qptiff, .btf, .tf8, … are TIFFs
                levels, file_mpp, rgb_like, names, props = _open_tiff(p)
            else:
                what = "a folder that is not an OME-Zarr image" if p.is_dir() else f"unsupported file type '{suffix}'"
                raise SlideError(f"{p}: {what}; napari-crafts reads SVS, NDPI, SCN, BIF, (OME-)TIFF and OME-Zarr: "
                                 "convert to OME-TIFF.")
        broken = any(_STRUCTURE_DAMAGE in c or "ByteCounts" in c for c in complaints)
        if broken or (p.is_file() and _is_tiff(p) and _data_past_end(p, p.stat().st_size)):  # a copy cut short
            raise SlideError(f"{p}: not a readable slide or image ({_damage(p, None)}).")
        levels, found_kind, names = _arrange(p, levels, rgb_like, names, kind)
    except SlideError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt file, unknown codec, …: one line naming the file and the cause
        raise SlideError(f"{p}: not a readable slide or image ({_damage(p, err)}).") from err
    return Slide(p, levels, float(mpp) if mpp is not None else file_mpp, found_kind, names, props)


_Opened = tuple[list[da.Array], float | None, bool, list[str] | None, dict[str, Any]]


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Errors that say nothing to a user about a file (raised deep inside a reader on a damaged structure).
_INTERNAL_ERRORS = (IndexError, KeyError, AttributeError, TypeError, AssertionError, struct_error)


#: What tifffile logs when a TIFF's structure points outside the file or is broken (a truncated copy).
_STRUCTURE_DAMAGE = "invalid"


@contextmanager
def _tifffile_complaints(into: list[str]) -> Iterator[None]:
    """Collect (and keep off the terminal) what tifffile logs in this thread while a file is opened."""
    import logging

    thread = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread:
                into.append(" ".join(record.getMessage().split()))

    log = logging.getLogger("tifffile")
    handler, propagate = Collect(logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _is_tiff(p: Path) -> bool:
    """Whether ``p`` is a file that starts like a (Big)TIFF, whatever its name."""
    try:
        with open(p, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _damage(p: Path, err: BaseException | None) -> str:
    """Why a file could not be opened, in words: a TIFF cut short says so; a reader's own error is named.

    ``err`` None: tifffile found the structure broken (and logged it) without raising."""
    size = p.stat().st_size if p.is_file() else 0
    if p.is_file() and _is_tiff(p):
        with open(p, "rb") as fh:
            head = fh.read(16)
        big = head[2:4] in (b"+\x00", b"\x00+")
        order = "<" if head[:2] == b"II" else ">"
        offset = int.from_bytes(head[8:16] if big else head[4:8], "little" if order == "<" else "big")
        if offset >= size or err is None or isinstance(err, _INTERNAL_ERRORS) or _data_past_end(p, size):
            return (f"the TIFF is truncated or damaged: it has {size:,} bytes and its structure points past them "
                    "or is broken; copy or export it again")
    if isinstance(err, _INTERNAL_ERRORS):
        return "its structure could not be read; the file may be damaged or not an image"
    cause = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {cause}"


def _data_past_end(p: Path, size: int) -> bool:
    """Whether the first page's image data lies (partly) past the end of the file: a copy cut short."""
    import tifffile

    try:
        with _tifffile_complaints([]), tifffile.TiffFile(p) as tif:
            page = tif.pages.first
            return any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts, strict=False))
    except Exception:  # noqa: BLE001 - the structure itself is unreadable: nothing more to learn here
        return False


def _open_tiffslide(p: Path) -> _Opened:
    import tiffslide

    ts = tiffslide.TiffSlide(p)
    group = ts.zarr_group
    props = dict(ts.properties)
    axes = str(props.get("tiffslide.series-axes") or "YXS")
    levels = [da.from_zarr(group[str(i)]) for i in range(ts.level_count)]
    levels, rgb_like = _to_yxc(p, levels, axes)
    mpp = props.get("tiffslide.mpp-x")
    return levels, float(mpp) if mpp and mpp < _MAX_TIFF_MPP else None, rgb_like, None, props


def _open_tiff(p: Path) -> _Opened:
    import tifffile
    import zarr

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        axes, dtype, shape = series.axes, series.dtype, series.shape
        if axes.endswith("S") and shape[-1] in (3, 4) and dtype == np.uint8:
            levels, mpp, rgb_like, names, props = _open_tiffslide(p)  # RGB (whole-slide) TIFF
        else:
            store = series.aszarr()
            node = zarr.open(store, mode="r")
            levels = [da.from_zarr(node[str(i)]) for i in range(len(series.levels))] if isinstance(
                node, zarr.Group) else [da.from_zarr(node)]
            levels, rgb_like = _to_yxc(p, levels, axes)
            mpp, names, props = _tiff_mpp(tif), _ome_channel_names(tif), {"tifffile.series-axes": axes}
            names, props["channel_colors"] = _if_channels(tif, names, shape[axes.index("C")] if "C" in axes else 1)
        if tif.ome_metadata:
            props["ome-xml"] = tif.ome_metadata
            if (record := record_from_ome_xml(tif.ome_metadata)) is not None:
                props[PROVENANCE_KEY] = record
            mpp = _ome_mpp(tif.ome_metadata) or mpp
    return levels, mpp, rgb_like, names, props


def _if_channels(tif: Any, names: list[str] | None, n: int) -> tuple[list[str] | None, list[Any] | None]:
    """Channel names and colours of an immunofluorescence TIFF (QPTIFF pages, or OME-XML colours)."""
    from .qptiff import ome_channel_colors, qpi_channels

    qpi = qpi_channels(tif)
    if qpi is not None and len(qpi) == n:
        return [c.name for c in qpi], [c.color for c in qpi]
    return names, ome_channel_colors(tif.ome_metadata, n) if tif.ome_metadata else None


def _tiff_mpp(tif: Any) -> float | None:
    """µm/px from the TIFF resolution tags (centimeter, inch; ImageJ 'micron'), None if absent or implausible."""
    from tifffile import RESUNIT

    page = tif.pages.first
    if "XResolution" not in page.tags:
        return None
    xres = float(page.resolution[0])
    unit = page.resolutionunit
    um_per_unit = {RESUNIT.CENTIMETER: 1e4, RESUNIT.INCH: 25400.0, RESUNIT.MILLIMETER: 1e3,
                   RESUNIT.MICROMETER: 1.0}.get(unit)
    if um_per_unit is None and tif.is_imagej:
        um_per_unit = _UNIT_TO_UM.get(str((tif.imagej_metadata or {}).get("unit", "")).lower())
    if um_per_unit is None or xres <= 0:
        return None
    mpp = um_per_unit / xres
    return mpp if mpp < _MAX_TIFF_MPP else None


def _ome_pixels(xml: str) -> dict[str, Any]:
    from tifffile import xml2dict

    image = xml2dict(xml).get("OME", {}).get("Image", {})
    image = image[0] if isinstance(image, list) else image
    return dict(image.get("Pixels", {}))


def _ome_mpp(xml: str) -> float | None:
    try:
        pixels = _ome_pixels(xml)
        size = pixels.get("PhysicalSizeX")
        factor = _UNIT_TO_UM.get(str(pixels.get("PhysicalSizeXUnit", "µm")).lower())
    except (SyntaxError, ValueError, TypeError, AttributeError):  # malformed OME-XML: use the resolution tags
        return None
    return float(size) * factor if size and factor else None


def _ome_channel_names(tif: Any) -> list[str] | None:
    if not tif.ome_metadata:
        return None
    try:
        channels = _ome_pixels(tif.ome_metadata).get("Channel", [])
    except (SyntaxError, ValueError, TypeError, AttributeError):  # malformed OME-XML: no names
        return None
    channels = channels if isinstance(channels, list) else [channels]
    names = [str(c.get("Name", "")) for c in channels if isinstance(c, dict)]
    return names if names and all(names) else None


def _is_zarr(p: Path) -> bool:
    if not p.is_dir():
        return p.suffix.lower() == ".zarr"  # a missing .zarr path is still ours (open_slide says it is missing)
    if p.suffix.lower() == ".zarr":
        return True
    return _ngff_meta(p) is not None


def _ngff_meta(p: Path) -> dict[str, Any] | None:
    """The 'multiscales' holder from zarr.json (v3, under 'ome') or .zattrs (v2), without opening zarr."""
    for name, under in (("zarr.json", ("attributes",)), (".zattrs", ())):
        try:
            meta = json.loads((p / name).read_text())
        except (OSError, ValueError):
            continue
        for key in under:
            meta = meta.get(key, {})
        meta = meta.get("ome", meta)
        if "multiscales" in meta:
            return meta
    return None


def _open_ngff(p: Path) -> _Opened:
    import zarr

    group = zarr.open_group(p, mode="r")
    props: dict[str, Any] = group.attrs.asdict()  # JSON
    ome: dict[str, Any] = props.get("ome", props)
    if not ome.get("multiscales"):
        raise SlideError(f"{p}: a zarr store without 'multiscales' metadata, not an OME-Zarr image; "
                         "write it as OME-Zarr (NGFF 0.4 or 0.5).")
    ms = ome["multiscales"][0]
    datasets = ms["datasets"]
    levels = [da.from_zarr(group[d["path"]]) for d in datasets]
    axes_meta = ms.get("axes") or list("tczyx"[-levels[0].ndim :])
    axes = "".join(_ngff_axis(a) for a in axes_meta)
    scale = _ngff_scale(datasets[0].get("coordinateTransformations", []), levels[0].ndim)
    outer = _ngff_scale(ms.get("coordinateTransformations", []), levels[0].ndim)
    unit = axes_meta[-1].get("unit") if isinstance(axes_meta[-1], dict) else None
    size = scale[-1] * outer[-1]
    if unit:
        mpp: float | None = size * _UNIT_TO_UM.get(str(unit).lower(), 1.0)
    else:  # no unit: a scale of 1 is a writer's placeholder; any other scale is taken as µm (as NGFF readers do)
        mpp = None if size == 1.0 else size
    levels, _ = _to_yxc(p, levels, axes)
    c = levels[0].shape[2] if levels[0].ndim == 3 else 1
    rgb_like = c in (3, 4) and levels[0].dtype == np.uint8
    channels = ome.get("omero", {}).get("channels") or []
    labels = [str(ch.get("label", "")) for ch in channels]
    names = labels if len(labels) == c and all(labels) else None
    return levels, mpp, rgb_like, names, props


def _ngff_axis(axis: Any) -> str:
    name = axis.get("name", "") if isinstance(axis, dict) else str(axis)
    if isinstance(axis, dict) and axis.get("type") == "channel":
        return "C"
    return {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(name.lower(), "Q")


def _ngff_scale(transforms: list[dict[str, Any]], ndim: int) -> list[float]:
    for t in transforms:
        if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            return [float(s) for s in t["scale"]]
    return [1.0] * ndim


# --------------------------------------------------------------------------------------------- axes and kind


def _to_yxc(p: Path, levels: list[da.Array], axes: str) -> tuple[list[da.Array], bool]:
    """Levels as (Y, X) or (Y, X, C): singleton extra axes dropped; True if the channels are RGB samples."""
    axes = axes.upper()
    if "Y" not in axes or "X" not in axes or len(axes) != levels[0].ndim:
        raise SlideError(f"{p}: axes '{axes}' for shape {levels[0].shape}: cannot find the Y and X axes.")
    shape0 = levels[0].shape
    extra = [a for i, a in enumerate(axes) if a not in "YX" and shape0[i] > 1]
    if len(extra) > 1:
        sizes = ", ".join(f"{a}={shape0[axes.index(a)]}" for a in extra)
        raise SlideError(f"{p}: has more than one non-spatial axis ({sizes}); napari-crafts reads one 2-D plane "
                         "with optional channels: save a single Z/T plane.")
    keep = "YX" + "".join(extra)
    out = []
    for arr in levels:
        index = tuple(slice(None) if a in keep else 0 for a in axes)
        arr = arr[index]
        kept = [a for a in axes if a in keep]
        out.append(arr.transpose([kept.index(a) for a in keep]))
    return out, bool(extra) and extra[0] == "S"


def _arrange(p: Path, levels: list[da.Array], rgb_like: bool, names: list[str] | None,
             kind: str | None) -> tuple[list[da.Array], str, list[str] | None]:
    """(Y, X[, C]) levels → the final axes of ``kind`` (given, or by rule: RGB, integer that looks like labels
    (:func:`looks_like_labels`) → labels, else channels)."""
    arr0 = levels[0]
    c = arr0.shape[2] if arr0.ndim == 3 else 0
    integer = arr0.dtype.kind in "iub"
    if kind is None:
        if c in (3, 4) and rgb_like and arr0.dtype == np.uint8:
            kind = "rgb"
        elif c <= 1 and integer and looks_like_labels(p, arr0):
            kind = "labels"
        elif c > 1 and integer and not names and all(_is_flat(arr0[..., i], empty=False) for i in range(2)):
            raise SlideError(f"{p}: a stack of {c} planes of {arr0.dtype} labels ({c}×{arr0.shape[0]}×"
                             f"{arr0.shape[1]}); napari-crafts reads one 2-D labels image: save the plane you want on "
                             "its own (e.g. tifffile.imwrite('plane.tif', tifffile.imread(path)[i])), or pass --kind "
                             "channels if these are fluorescence channels.")
        else:
            kind = "channels"
    if kind == "rgb":
        if c not in (3, 4):
            raise SlideError(f"{p}: cannot open as RGB: it has {c or 1} channel(s), RGB needs 3.")
        return [a[..., :3] for a in levels], kind, None
    if kind == "labels":
        if c > 1 or arr0.dtype.kind not in "iubf":
            what = f"{c} channels" if c > 1 else f"{arr0.dtype} values"
            raise SlideError(f"{p}: cannot open as labels: it has {what}; labels are one channel of integers.")
        planes = [a[..., 0] if a.ndim == 3 else a for a in levels]
        if not integer:  # float labels (some segmenters save them): whole numbers only, checked as read
            to = np.int32 if arr0.dtype.itemsize <= 4 else np.int64
            whole = functools.partial(_float_labels, path=str(p), dtype=to)
            planes = [da.map_blocks(whole, a, dtype=to) for a in planes]
        return planes, kind, None
    levels = [a.transpose(2, 0, 1) if a.ndim == 3 else a[None] for a in levels]
    return levels, kind, names if names and len(names) == levels[0].shape[0] else None


#: File names that say "labels" (any case): such integer files open as labels whatever their pixels.
LABEL_NAME_HINTS = ("mask", "label")
#: Side of the window at the middle of level 0 that :func:`looks_like_labels` reads.
LABELS_SAMPLE = 512
#: Fraction of neighbouring pixel pairs on the foreground that must be equal for an image to look like labels.
LABELS_FLAT = 0.5


def looks_like_labels(p: Path, level0: da.Array) -> bool:
    """Whether a one-channel integer image is labels (by rule; ``--kind``/``kind=`` overrides it).

    Its name says so (:data:`LABEL_NAME_HINTS`), or it is flat: labels are regions of one value, so most pairs of
    neighbouring pixels that touch a non-zero pixel are equal (≥ :data:`LABELS_FLAT`; DSB 2018 mask 0.95), while a
    fluorescence or brightfield grey image varies from pixel to pixel (DSB 2018 image 0.05). Read: one window of
    :data:`LABELS_SAMPLE`² at the middle of level 0; a window with no non-zero pixel counts as (empty) labels.
    """
    if any(hint in p.name.lower() for hint in LABEL_NAME_HINTS):
        return True
    return _is_flat(level0[..., 0] if level0.ndim == 3 else level0)


def _is_flat(arr: da.Array, *, empty: bool = True) -> bool:
    """:func:`looks_like_labels` by its pixels alone: one (Y, X) plane (``empty``: what an all-zero window is)."""
    h, w = arr.shape
    y0, x0 = max(0, (h - LABELS_SAMPLE) // 2), max(0, (w - LABELS_SAMPLE) // 2)
    # read here, in this thread: inside a dask worker the default scheduler is the cluster's, which cannot take it
    win = np.asarray(arr[y0 : y0 + LABELS_SAMPLE, x0 : x0 + LABELS_SAMPLE].compute(scheduler="synchronous"))
    equal = touching = 0
    for a, b in ((win[:, 1:], win[:, :-1]), (win[1:], win[:-1])):
        fg = (a != 0) | (b != 0)
        touching += int(fg.sum())
        equal += int((fg & (a == b)).sum())
    return empty if touching == 0 else equal >= LABELS_FLAT * touching


def _float_labels(block: np.ndarray, *, path: str, dtype: Any) -> np.ndarray:
    """A block of float labels as integers; SlideError when it holds fractions or negative values."""
    finite = np.isfinite(block)
    if not finite.all() or (block < 0).any() or (block != np.floor(block)).any():
        raise SlideError(f"{path}: read as labels (--kind labels) but it holds fractional, negative or NaN values: "
                         "it is not a labels image (leave --kind out to read it as fluorescence).")
    return block.astype(dtype)


# --------------------------------------------------------------------------------------------- workers


@functools.lru_cache(maxsize=8)
def _cached_slide(path: str, mpp: float | None, kind: str | None) -> Slide:
    return open_slide(path, mpp=mpp, kind=kind)


def clear_cache() -> None:
    """Forget the slides opened by :func:`read_window` in this process (e.g. after a file was rewritten)."""
    _cached_slide.cache_clear()


def read_window(path: str | Path, level: int, y0: int, x0: int, height: int, width: int, *,
                mpp: float | None = None, kind: str | None = None) -> np.ndarray:
    """Window of a slide by path, reopened once per process: safe to call in dask.distributed workers.

    Same result as :meth:`Slide.read` (zero-padded outside the level; negative y0/x0 allowed).
    """
    slide = _cached_slide(str(Path(path).resolve()), mpp, kind)
    return slide.read(level, y0, x0, height, width)


@dataclass(frozen=True)
class SlideRef:
    """A picklable handle on one level of a slide: what dask.distributed workers receive instead of arrays."""

    path: str
    level: int = 0
    mpp: float | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(Path(self.path).resolve()))

    def read(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Window of this level (see :meth:`Slide.read`)."""
        return read_window(self.path, self.level, y0, x0, height, width, mpp=self.mpp, kind=self.kind)

    def open(self) -> Slide:
        """The slide, from this process's cache (do not mutate it)."""
        return _cached_slide(self.path, self.mpp, self.kind)


def level_for_mpp(slide: Slide, target_mpp: float) -> int:
    """The coarsest level whose pixel size is at most ``target_mpp`` (0 when none is, or mpp is unknown)."""
    if slide.mpp is None:
        return 0
    ds = slide.downsamples
    fine_enough = [i for i in range(len(ds)) if slide.mpp * ds[i] <= target_mpp * (1 + 1e-6)]
    return max(fine_enough, key=lambda i: ds[i], default=0)
