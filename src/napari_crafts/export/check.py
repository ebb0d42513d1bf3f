"""Does an image say it is synthetic H&E from napari-crafts? Metadata and watermark (``napari-crafts check``).

For every image (PNG/JPEG and other Pillow formats, (OME-)TIFF and whole-slide files, OME-Zarr; folders are
searched for them) it reports whether the provenance record is in the file's metadata (OME-Zarr attributes, the
OME-TIFF MapAnnotation, the PNG text chunk "napari_crafts"), whether the invisible watermark is in its pixels,
with its strength (z) and payload, whether the two match, and a verdict. Large images are not loaded: up to
``--max-tiles`` windows of 512² are read lazily, spread over level 0.

Exit code: 0 when at least one image is synthetic, 1 when none is, 2 when an image could not be checked (as grep:
an error wins, the report says which images were read). No Qt, no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..provenance import read_record
from . import watermark as wm

#: Files read with Pillow (whole image in memory; a PNG cannot be read window by window).
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: Files and folders read lazily through :func:`napari_crafts.io.slide.open_slide`.
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".svslide", ".zarr")
_KINDS = f"{', '.join(PILLOW_SUFFIXES + SLIDE_SUFFIXES)} files and OME-Zarr folders"
#: Images up to this many pixels are checked whole; larger ones by windows.
WHOLE_IMAGE_PX = 2048 * 2048
TILE = 512
DEFAULT_MAX_TILES = 16
EXIT_SYNTHETIC, EXIT_NONE, EXIT_ERROR = 0, 1, 2
NO_SIGN = "no napari-crafts provenance or watermark found (this does not prove the image is real)"


@dataclass
class ImageReport:
    """What ``check`` found in one image."""

    path: str
    format: str = ""
    shape: list[int] | None = None  # (Y, X) of level 0
    provenance: dict[str, Any] = field(default_factory=lambda: {"found": False})
    watermark: dict[str, Any] = field(default_factory=lambda: {"checked": False, "found": False})
    record_match: bool | None = None  # the watermark's record hash equals the metadata record's (None: not both)
    synthetic: bool = False
    verdict: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- finding images


def _is_image_dir(p: Path) -> bool:
    from ..io.slide import is_supported

    return p.is_dir() and is_supported(p)  # an OME-Zarr store (by name or NGFF metadata)


def iter_images(paths: Sequence[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """(image path, None) for every image under ``paths``; (path, error) for a path that holds none."""
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            yield p, f"{p}: no such file or folder."
        elif _is_image_dir(p) or p.is_file() and p.suffix.lower() in PILLOW_SUFFIXES + SLIDE_SUFFIXES:
            yield p, None
        elif p.is_file():
            yield p, f"{p}: not an image check reads ({_KINDS})."
        else:
            found = sorted(_walk(p))
            if not found:
                yield p, f"{p}: no images in this folder (looked for {_KINDS})."
            for q in found:
                yield q, None


def _walk(folder: Path) -> Iterator[Path]:
    for q in folder.iterdir():
        if q.name.startswith("."):
            continue
        if _is_image_dir(q):
            yield q
        elif q.is_dir():
            yield from _walk(q)
        elif q.suffix.lower() in PILLOW_SUFFIXES + SLIDE_SUFFIXES:
            yield q


# --------------------------------------------------------------------------------------------- reading


Reader = Callable[[int, int, int, int], np.ndarray]  # (y, x, height, width) → uint8 (h, w[, 3])


def _open_pillow(p: Path) -> tuple[str, tuple[int, int], Reader, dict[str, Any] | None]:
    from PIL import Image

    with Image.open(p) as img:
        fmt = (img.format or p.suffix.lstrip(".")).lower()
        arr = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    return fmt, (arr.shape[0], arr.shape[1]), lambda y, x, h, w: arr[y : y + h, x : x + w], read_record(p)


def file_record(path: str | Path) -> dict[str, Any] | None:
    """The provenance record stored in an image file (PNG text chunk, OME-TIFF MapAnnotation, OME-Zarr attributes),
    pixels left unread (``provenance.read_record``); None when the file holds none or cannot be read (e.g. a napari
    layer's source file, which napari's own reader opened without our metadata)."""
    p = Path(path)
    return read_record(p) if p.suffix.lower() in PILLOW_SUFFIXES + SLIDE_SUFFIXES or p.is_dir() else None


def _open_lazy(p: Path) -> tuple[str, tuple[int, int], Reader | None, dict[str, Any] | None]:
    from ..io.slide import open_slide
    from . import read_provenance

    slide = open_slide(p)
    fmt = "ome-zarr" if p.is_dir() else p.suffix.lstrip(".").lower()
    try:
        record = read_provenance(p)
    except (ValueError, OSError):  # foreign or damaged metadata: no record
        record = None
    if slide.kind != "rgb":
        return fmt, slide.shape, None, record
    return fmt, slide.shape, lambda y, x, h, w: slide.read(0, y, x, h, w), record


def windows(shape: tuple[int, int], max_tiles: int) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) to check: the whole image when small, else up to ``max_tiles`` 512² chunks spread evenly."""
    H, W = shape
    if H * W <= WHOLE_IMAGE_PX:
        return [(0, 0, H, W)]
    rows, cols = -(-H // TILE), -(-W // TILE)
    k_rows = max(1, min(rows, round(math.sqrt(max_tiles * rows / cols))))
    k_cols = max(1, min(cols, max_tiles // k_rows))
    ys = sorted({int(v) for v in np.linspace(0, rows - 1, k_rows).round()})
    xs = sorted({int(v) for v in np.linspace(0, cols - 1, k_cols).round()})
    return [(r * TILE, c * TILE, min(TILE, H - r * TILE), min(TILE, W - c * TILE)) for r in ys for c in xs]


# --------------------------------------------------------------------------------------------- checking


def _watermark(read: Reader, shape: tuple[int, int], max_tiles: int) -> dict[str, Any]:
    found: list[wm.Detection] = []
    best: wm.Detection | None = None
    boxes = [b for b in windows(shape, max_tiles) if min(b[2], b[3]) >= wm.MIN_SIDE]
    for y, x, h, w in boxes:
        det = wm.detect_watermark(np.ascontiguousarray(read(y, x, h, w)))
        if det.found:
            found.append(det)
        if best is None or det.z > best.z:
            best = det
    if best is None:
        return {"checked": False, "found": False, "note": f"image smaller than {wm.MIN_SIDE} px: not checked"}
    payloads = Counter(d.payload for d in found if d.payload)
    payload = payloads.most_common(1)[0][0] if payloads else None
    shown = next((d for d in found if d.payload == payload), best) if found else best
    return {
        "checked": True, "found": bool(found), "z": best.z, "threshold": wm.Z_THRESHOLD,
        "payload": payload, "record_hash": payload[-8:] if payload else None,
        "known_bit_errors": shown.known_bit_errors, "corrected_bits": shown.corrected_bits, "scale": shown.scale,
        "tiles_checked": len(boxes), "tiles_found": len(found), "note": shown.note,
    }


def _provenance(record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None:
        return {"found": False}
    if "unreadable" in record:
        return {"found": True, "synthetic": None, "note": record["unreadable"]}
    keys = ("synthetic", "generator", "version", "mode", "created", "complete", "warning")
    summary: dict[str, Any] = {"found": True, **{k: record.get(k) for k in keys}}
    try:
        summary["record_hash"] = f"{wm.record_hash(record):08x}"
    except wm.WatermarkError:  # not JSON (e.g. a layer's metadata edited in Python): nothing to match
        summary["record_hash"] = None
    summary["watermark"] = record.get("watermark")
    return summary


def _verdict(rep: ImageReport) -> tuple[bool, str]:
    prov, mark = rep.provenance, rep.watermark
    says_synthetic = bool(prov.get("found") and prov.get("synthetic"))
    if mark.get("found"):
        if rep.record_match:
            return True, "SYNTHETIC: napari-crafts watermark and provenance record, and they match"
        if prov.get("found") and rep.record_match is None:  # the payload (or the record's hash) did not read
            return True, ("SYNTHETIC: napari-crafts watermark (its payload could not be read to match it) and a "
                          "provenance record")
        if prov.get("found"):
            return True, ("SYNTHETIC: napari-crafts watermark and a provenance record that does not match it "
                          "(record edited, or the pixels come from another output)")
        return True, "SYNTHETIC: napari-crafts watermark in the pixels (no provenance metadata: stripped or re-saved)"
    if says_synthetic:
        off = isinstance(prov.get("watermark"), dict) and prov["watermark"].get("enabled") is False
        why = ("the record says it was turned off" if off else
               "not checked" if not mark.get("checked") else "turned off, or removed by editing")
        return True, f"SYNTHETIC: the provenance record says so; no watermark found ({why})"
    return False, NO_SIGN


def check_image(path: str | Path, *, max_tiles: int = DEFAULT_MAX_TILES) -> ImageReport:
    """Check one image (file or OME-Zarr folder); errors go into the report, never raised."""
    from ..io.slide import SlideError

    p = Path(path)
    rep = ImageReport(path=str(p))
    try:
        opened = _open_pillow(p) if p.suffix.lower() in PILLOW_SUFFIXES else _open_lazy(p)
        rep.format, shape, read, record = opened
        _fill(rep, shape, read, record, max_tiles)
    except (SlideError, wm.WatermarkError) as err:
        rep.error = " ".join(str(err).split())
    except (OSError, ValueError) as err:  # Pillow: unreadable or truncated file
        rep.error = f"{p}: cannot read it as an image ({type(err).__name__}: {' '.join(str(err).split())})."
    except Exception as err:  # noqa: BLE001 - e.g. Pillow's DecompressionBombError: one line, not a traceback
        rep.error = f"{p}: {type(err).__name__}: {' '.join(str(err).split())}"
    return _decide(rep)


def check_array(data: Any, record: dict[str, Any] | None, *, name: str = "layer",
                max_tiles: int = DEFAULT_MAX_TILES, record_from: str | None = None) -> ImageReport:
    """Check pixels in memory or lazy (numpy, dask, zarr; (Y, X), (Y, X, 3) or (Y, X, 4) uint8) and the record
    that goes with them (a napari layer's data and metadata): the same report as for a file. ``record_from``:
    where the record was read when not from the layer (its source file), said in the report."""
    rep = ImageReport(path=name, format="array")
    record = record if isinstance(record, dict) else None
    shape = tuple(int(n) for n in data.shape)
    rgb = len(shape) == 3 and shape[2] in (3, 4)
    if np.dtype(data.dtype) != np.uint8 or not (len(shape) == 2 or rgb):
        _fill(rep, shape[:2], None, record, max_tiles, record_from)
        rep.watermark["note"] = (f"not an 8-bit grey or RGB image ({data.dtype}, shape {shape}): watermark not "
                                 "checked")
        return _decide(rep)

    def read(y: int, x: int, h: int, w: int) -> np.ndarray:
        return np.asarray(data[y : y + h, x : x + w, :3] if rgb else data[y : y + h, x : x + w])

    try:
        _fill(rep, (shape[0], shape[1]), read, record, max_tiles, record_from)
    except wm.WatermarkError as err:
        rep.error = " ".join(str(err).split())
    return _decide(rep)


def _fill(rep: ImageReport, shape: tuple[int, ...], read: Reader | None, record: dict[str, Any] | None,
          max_tiles: int, record_from: str | None = None) -> None:
    """The shape, provenance and watermark parts of a report (``record_from``: where the record was read, when
    not from the image itself)."""
    rep.shape = [int(shape[0]), int(shape[1])]
    rep.provenance = _provenance(record)
    if record is not None and record_from:
        rep.provenance["from"] = record_from
    if read is None:
        rep.watermark = {"checked": False, "found": False, "note": "not an RGB image: watermark not checked"}
    else:
        rep.watermark = _watermark(read, (rep.shape[0], rep.shape[1]), max_tiles)


def _decide(rep: ImageReport) -> ImageReport:
    """The match and verdict of a filled report (or its error line)."""
    if rep.error:
        rep.verdict = f"error: {rep.error}"
        return rep
    mark_hash, prov_hash = rep.watermark.get("record_hash"), rep.provenance.get("record_hash")
    rep.record_match = None if not (mark_hash and prov_hash) else mark_hash == prov_hash
    rep.synthetic, rep.verdict = _verdict(rep)
    return rep


def check_paths(paths: Sequence[str | Path], *, max_tiles: int = DEFAULT_MAX_TILES,
                on_report: Callable[[ImageReport], None] | None = None) -> list[ImageReport]:
    """Reports for every image under ``paths`` (folders searched), in order; ``on_report`` hears each one."""
    reports = []
    for p, error in iter_images(paths):
        rep = ImageReport(path=str(p), error=error, verdict=f"error: {error}") if error else check_image(
            p, max_tiles=max_tiles)
        reports.append(rep)
        if on_report:
            on_report(rep)
    return reports


def exit_code(reports: Sequence[ImageReport]) -> int:
    """2 if any image could not be checked, else 0 if any is synthetic, else 1."""
    if any(r.error for r in reports):
        return EXIT_ERROR
    return EXIT_SYNTHETIC if any(r.synthetic for r in reports) else EXIT_NONE


# --------------------------------------------------------------------------------------------- CLI


def format_report(rep: ImageReport) -> str:
    """The human-readable lines for one image."""
    lines = [rep.path]
    if rep.error:
        return "\n".join([*lines, f"  error:      {rep.error}"])
    prov, mark = rep.provenance, rep.watermark
    if prov.get("note"):
        lines.append(f"  provenance: found, but {prov['note']}")
    elif prov.get("found"):
        what = "synthetic" if prov.get("synthetic") else "does not say synthetic"
        made = ", ".join(str(prov[k]) for k in ("generator", "version", "created") if prov.get(k))
        where = f", read from the file {prov['from']}" if prov.get("from") else ""
        lines.append(f"  provenance: found ({what}{'; ' + made if made else ''}){where}")
    else:
        lines.append("  provenance: none")
    if not mark.get("checked"):
        lines.append(f"  watermark:  {mark.get('note', 'not checked')}")
    else:
        state = "found" if mark["found"] else "not found"
        tiles = f", in {mark['tiles_found']} of {mark['tiles_checked']} windows" if mark["tiles_checked"] > 1 else ""
        detail = (f", payload {mark['payload']}, {mark['known_bit_errors']} of 16 known bits wrong, "
                  f"{mark['corrected_bits']} corrected" if mark.get("payload") else
                  ", payload too damaged to read" if mark["found"] else "")
        lines.append(f"  watermark:  {state} (z {mark['z']:.1f}, threshold {mark['threshold']:g}{detail}{tiles})")
    if rep.record_match is not None:
        verb = "matches" if rep.record_match else "does NOT match"
        lines.append(f"  match:      watermark payload {verb} the record")
    lines.append(f"  verdict:    {rep.verdict}")
    return "\n".join(lines)
