"""An invisible watermark for synthetic H&E: embed a 48-bit payload in every output chunk, detect it on any crop.

Method ("cell-sign", format 1), numpy only. The image's luma is cut into cells of 4×4 px on the level-0 pixel
grid, counted from the image origin. The detector looks at each cell's *residual*: its mean luma minus the mean
of its four neighbours, and keeps only the sign of residuals that are small (|r| ≤ 4 grey levels, the "window";
textured tissue with large residuals says nothing and is ignored). A fixed pseudo-random pattern of 32×32 cells
(128 px), repeated over the whole image, tells each cell which sign it should have: half of the cells are a sync
pattern, the other half carry 64 coded bits (the 48-bit payload and its CRC-16), 8 cells per bit per period.

Embedding is *informed*: it reads the chunk and nudges the luma of each cell whose residual is inside the window
but has the wrong sign, or the right sign by too little, until it agrees by a margin (0.5 grey level in flat
areas, 1 in textured ones; two checkerboard passes, since a cell's change moves its neighbours' residuals).
Changes come in 1/16 grey level: n of the cell's 16 px, in a Bayer dither order, get one level more. Cells
outside the window are left alone, so tissue is barely touched and glass gets about ±0.5 grey level. It is
integer arithmetic on the chunk alone: the same chunk gives the same bytes on any machine, which keeps the
whole-slide path's byte-identical resume. The same change goes to R, G and B: the mark lives in luma (which JPEG
keeps at full resolution) and hue is kept.

Where the mark goes in a tiled pipeline: on the *final* image, after blending, chunk by chunk on the fixed
512-px grid of the written image (:func:`watermark_image` does exactly that for an in-memory image), before the
pyramid is built, so levels 1 and 2 (2× and 4× means) carry it as cells of 2 and 1 px. Level 3 and coarser do
not (a cell would be half a pixel).

Detection (:func:`detect_watermark`) works on any crop of ≥ 64 px at level 0, 1 or 2: it tries the three scales,
every sub-cell phase, the window and no window (for contrast-stretched images), and by one FFT per trial all
32×32 pattern offsets: 43,008 hypotheses for an image of 512². It reports the best sync correlation as ``z``, a
±1 statistic normalised by its own size, so close to N(0, 1) on unmarked images whatever their content. The
pattern frequencies of anything periodic in 16 px (JPEG's block grids) are left out, so compression artefacts of
unmarked JPEG slides do not correlate with it. The threshold :data:`Z_THRESHOLD` comes from the null
distribution measured on real unmarked H&E (``benchmarks/bench_watermark.py``, ``docs/watermark.md``). Once
found, the payload is read two ways (per-bit correlation; least squares on the frequencies used) and accepted
only when its CRC, tag and version check out, after flipping at most 2 of its 8 weakest bits.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

METHOD = "cell-sign"
FORMAT_VERSION = 1
#: 12-bit project tag at the start of every payload ("CAF": crafts).
TAG = 0xCAF
CELL = 4  # px per cell side at level 0
PERIOD = 32  # cells per pattern period (128 px)
N_BITS = 64  # coded bits: 12 tag + 4 version + 32 record hash + 16 CRC
N_SYNC = 512  # sync cells per period (of PERIOD**2 = 1024)
#: Grey levels by which an embedded cell's residual agrees with its target: in flat areas (glass: SSIM and the eye
#: see the smallest change there) and in textured ones (tissue: masked by the texture, JPEG moves residuals more).
MARGIN_FLAT, MARGIN_TEXTURE = 0.5, 1.0
TEXTURE = 2  # grey levels: a cell is in a textured area when a residual of its 3×3 cells exceeds this
WINDOW = 4  # grey levels: residuals larger than this are ignored by the detector and left alone by the embedder
MAX_DELTA = 6  # grey levels: the largest change of one cell
PASSES = 2
SCALES = (1, 2, 4)  # level-0 px per image px that the detector tries (pyramid levels 0, 1, 2)
MIN_SIDE = 64  # px: smaller images are not checked
#: z at or above which a watermark counts as found; see docs/watermark.md for the measured null distribution.
Z_THRESHOLD = 8.0
CHUNK = 512  # the output grid that phase 2 marks chunk by chunk
#: Provenance keys left out of the record hash, because they are added or changed after the pixels are final:
#: "created"/"complete" change on resume and at the end; "mpp" the writers add, "mpp_set_by" the Pixel size
#: widget; "path"/"kind" the reader adds when it opens an output; "stack_index" the writer adds to each image of
#: a stack; "seam_score" is measured on the finished output (``demo``); "watermark" holds the watermark itself;
#: "live_edits" is a live-painted layer's history (``generation.live``: its pixels are the record's without it).
HASH_EXCLUDED_KEYS = frozenset({"created", "complete", "mpp", "mpp_set_by", "path", "kind", "stack_index",
                                "seam_score", "watermark", "live_edits"})
#: What the record says when the Python API's switch turned the watermark off.
OFF_IN_API = "watermark=False"
_KNOWN_BITS = 16  # tag + version
CHASE_BITS, CHASE_FLIPS = 8, 2  # payload reading may flip up to 2 of the 8 weakest bits (CRC + tag decide)
#: Order in which a cell's pixels take a fractional change (4×4 Bayer matrix: spread out, no visible texture).
_DITHER = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])


class WatermarkError(ValueError):
    """An input the watermark cannot take; the message says what was wrong."""


# --------------------------------------------------------------------------------------------- payload


@dataclass(frozen=True)
class Payload:
    """The 48 bits a watermark carries: project tag, format version, and 32 bits of the provenance record hash."""

    record_hash: int
    version: int = FORMAT_VERSION
    tag: int = TAG

    def __post_init__(self) -> None:
        if not (0 <= self.record_hash < 2**32 and 0 <= self.version < 16 and 0 <= self.tag < 2**12):
            raise WatermarkError(f"Payload out of range: tag {self.tag:#x} (12 bits), version {self.version} "
                                 f"(4 bits), record hash {self.record_hash:#x} (32 bits).")

    @property
    def value(self) -> int:
        """The 48 bits as one integer: tag, version, record hash (most significant first)."""
        return (self.tag << 36) | (self.version << 32) | self.record_hash

    @property
    def hex(self) -> str:
        """The 48 bits as 12 hex digits."""
        return f"{self.value:012x}"

    def coded_bits(self) -> np.ndarray:
        """The 64 embedded bits (bool, most significant first): the 48 payload bits and their CRC-16."""
        data = self.value.to_bytes(6, "big")
        word = (self.value << 16) | binascii.crc_hqx(data, 0xFFFF)
        return np.array([(word >> (63 - i)) & 1 for i in range(N_BITS)], dtype=bool)

    @classmethod
    def from_coded_bits(cls, bits: np.ndarray) -> tuple[Payload, bool]:
        """(payload, whether its CRC checks out) from 64 decoded bits."""
        word = 0
        for b in np.asarray(bits, dtype=bool):
            word = (word << 1) | int(b)
        value, crc = word >> 16, word & 0xFFFF
        ok = binascii.crc_hqx(value.to_bytes(6, "big"), 0xFFFF) == crc
        return cls(record_hash=value & 0xFFFFFFFF, version=(value >> 32) & 0xF, tag=value >> 36), ok


def record_hash(provenance: Mapping[str, Any]) -> int:
    """First 32 bits of the SHA-256 of the provenance record (canonical JSON, without :data:`HASH_EXCLUDED_KEYS`).

    The record is hashed as the file formats store it (``provenance.json_record``: tuples as lists, NaN and
    infinities as null), so a record in memory and the same record read back from a file hash alike.
    """
    from ..provenance import json_record

    kept = {k: v for k, v in provenance.items() if k not in HASH_EXCLUDED_KEYS}
    try:
        text = json.dumps(json_record(kept), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError) as err:
        raise WatermarkError(f"Provenance must be a JSON-able dict to hash it: {err}") from None
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def payload_for(provenance: Mapping[str, Any]) -> Payload:
    """The payload that links an output to its provenance record."""
    return Payload(record_hash=record_hash(provenance))


def describe_watermark(payload: Payload) -> dict[str, Any]:
    """What the provenance record says about the watermark (key ``"watermark"``)."""
    return {
        "enabled": True,
        "method": f"napari-crafts {METHOD}",
        "format_version": FORMAT_VERSION,
        "payload": payload.hex,
        "record_hash": f"{payload.record_hash:08x}",
        "record_hash_rule": "sha256 of the record as sorted compact JSON without "
                            f"{sorted(HASH_EXCLUDED_KEYS)}, first 4 bytes",
        "where": f"luma of {CELL}-px cells on the level-0 grid, each {CHUNK}-px output chunk marked on its own; "
                 "pyramid levels 1-2 carry it",
        "detect": "napari-crafts check FILE",
    }


def describe_no_watermark(reason: str) -> dict[str, Any]:
    """The provenance entry when the watermark was turned off on purpose (``reason``: e.g. the flag used)."""
    return {"enabled": False, "method": f"napari-crafts {METHOD}", "reason": reason}


def sign_record(record: dict[str, Any], watermark: bool | str = True) -> Payload | None:
    """Put the ``"watermark"`` entry in a final provenance record; the payload to embed, or None when it is off.

    Call it once everything but :data:`HASH_EXCLUDED_KEYS` is in ``record``. ``watermark``: True marks; False
    (the Python API's switch, recorded as :data:`OFF_IN_API`) or the name of the switch that turned it off (e.g.
    ``"--no-watermark"``) records that it was turned off on purpose.
    """
    if isinstance(watermark, str) or not watermark:
        record["watermark"] = describe_no_watermark(watermark if isinstance(watermark, str) else OFF_IN_API)
        return None
    payload = payload_for(record)
    record["watermark"] = describe_watermark(payload)
    return payload


def mark_kept_pixels(data: np.ndarray, record: dict[str, Any]) -> bool:
    """Mark, in place, what a stopped run kept in a layer, unless its record already has a watermark entry.

    ``data`` is uint8 (…, Y, X, 3|4): RGB or RGBA, one image or a stack, each image marked on its own 512-px
    chunk grid. With an alpha channel, pixels never painted (alpha 0) stay as they were. The record gets its
    ``"watermark"`` entry; True when the pixels were marked (False: the record says marked, or turned off).
    """
    if "watermark" in record:
        return False
    payload = sign_record(record)
    if payload is None:  # pragma: no cover - sign_record(record) always marks
        return False
    for index in np.ndindex(*data.shape[:-3]):
        plane = data[index]  # a view: marked in place
        marked = watermark_image(np.ascontiguousarray(plane[..., :3]), payload)
        if plane.shape[-1] == 4:
            marked[plane[..., 3] == 0] = plane[..., :3][plane[..., 3] == 0]
        plane[..., :3] = marked
    return True


# --------------------------------------------------------------------------------------------- the pattern


def _hash_stream(key: bytes, n: int) -> np.ndarray:
    """``n`` unsigned 32-bit numbers from SHA-256 in counter mode: the same on every machine and numpy version."""
    blocks = b"".join(hashlib.sha256(key + i.to_bytes(4, "little")).digest() for i in range(-(-4 * n // 32)))
    return np.frombuffer(blocks[: 4 * n], dtype="<u4").astype(np.int64)


def _layout() -> tuple[np.ndarray, np.ndarray]:
    """Per cell of the period: its role (-1 sync, else the coded bit it carries) and its chip (±1)."""
    n = PERIOD * PERIOD
    stream = _hash_stream(b"napari-crafts watermark format 1", 2 * n)
    order = np.argsort(stream[:n], kind="stable")
    role = np.empty(n, dtype=np.int64)
    role[order[:N_SYNC]] = -1
    role[order[N_SYNC:]] = np.arange(n - N_SYNC) % N_BITS
    chips = np.where(stream[n:] & 1, 1, -1)
    return role.reshape(PERIOD, PERIOD), chips.reshape(PERIOD, PERIOD)


_ROLE, _CHIPS = _layout()


def _kept_frequencies(cell: int) -> np.ndarray:
    """Boolean (PERIOD, PERIOD) mask of the pattern frequencies the detector uses, for cells of ``cell`` px.

    Frequencies of anything periodic in 16 px are dropped: JPEG's 8-px blocks and 16-px chroma macroblocks (in
    the image, or in the finer image it was reduced from) leave such patterns in the luma of unmarked images, and
    in flat glass their signs must not correlate with the pattern. This keeps 77 %, 56 % and 25 % of the
    pattern's energy at cells of 4, 2 and 1 px.
    """
    keep = np.arange(PERIOD) % (PERIOD * cell // 16) != 0
    return keep[:, None] & keep[None, :]


def _sync_template(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FFTs (conjugated) of the sync chips on the kept frequencies, and of their squares."""
    template = np.real(np.fft.ifft2(np.fft.fft2(np.where(_ROLE < 0, _CHIPS, 0).astype(np.float64)) * keep))
    return np.conj(np.fft.fft2(template)), np.conj(np.fft.fft2(template**2))


_KEEP = {scale: _kept_frequencies(CELL // scale) for scale in SCALES}
_TEMPLATES = {scale: _sync_template(keep) for scale, keep in _KEEP.items()}


@functools.cache
def _least_squares(scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-inverse of the design (the sync pattern and each bit's pattern on the kept frequencies) and the
    diagonal of its inverse Gram matrix, for the least-squares reading at ``scale``."""
    keep = _KEEP[scale]
    cols = [np.where(_ROLE < 0, _CHIPS, 0)] + [np.where(_ROLE == k, _CHIPS, 0) for k in range(N_BITS)]
    design = np.stack([np.real(np.fft.ifft2(np.fft.fft2(c.astype(np.float64)) * keep)).ravel() for c in cols], axis=1)
    # normal equations with einsum rather than an SVD: threaded BLAS/LAPACK can take seconds on a busy machine
    inverse_gram = np.linalg.inv(np.einsum("ij,ik->jk", design, design))
    pinv = np.einsum("jk,ik->ji", inverse_gram, design)
    return design, pinv, np.diag(inverse_gram).copy()


def _targets(bits: np.ndarray) -> np.ndarray:
    """Wanted residual sign (±1) of each cell of one period."""
    signs = np.where(bits, 1, -1)
    return np.where(_ROLE < 0, 1, signs[np.maximum(_ROLE, 0)]) * _CHIPS


# --------------------------------------------------------------------------------------------- embedding


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise WatermarkError(f"{what} must be a uint8 RGB array (H, W, 3), got a {got}.")


def _residual4(sums: np.ndarray) -> np.ndarray:
    """4·cell − its four neighbours (edges replicated), on integer cell sums."""
    p = np.pad(sums, 1, mode="edge")
    return 4 * sums - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


def embed_watermark(tile: np.ndarray, payload: Payload, *, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The tile with the watermark in it (a new array); deterministic: the same tile gives the same bytes.

    ``tile`` is uint8 RGB (H, W, 3) of the final image (after blending) whose top-left pixel sits at ``origin``
    (y, x) in level-0 pixels; both must be multiples of :data:`CELL`. Mark whole output chunks (e.g. the 512-px
    chunks an OME-Zarr is written in), each on its own.
    """
    _check_rgb(tile, "The tile to watermark")
    y0, x0 = (int(v) for v in origin)
    if y0 % CELL or x0 % CELL or y0 < 0 or x0 < 0:
        raise WatermarkError(f"Tile origin {origin} must be non-negative multiples of {CELL} px "
                             "(mark output chunks on their grid).")
    h, w = tile.shape[:2]
    ny, nx = -(-h // CELL), -(-w // CELL)
    if h == 0 or w == 0:
        return tile.copy()
    luma = np.pad(_luma(tile), ((0, ny * CELL - h), (0, nx * CELL - w)), mode="edge")
    sums = luma.reshape(ny, CELL, nx, CELL).sum(axis=(1, 3), dtype=np.int64)  # luma ×1000 over the cell's 16 px
    period = _targets(payload.coded_bits())
    target = period[(np.arange(ny) + y0 // CELL)[:, None] % PERIOD, (np.arange(nx) + x0 // CELL)[None, :] % PERIOD]
    # changes are counted in pixel-levels: n means n of the cell's 16 px (in dither order) brighter by one level
    step = 4 * 1000  # residual units per pixel-level (4·cell − neighbours, luma ×1000)
    window = WINDOW * CELL * CELL * step
    activity = np.abs(_residual4(sums))
    p = np.pad(activity, 1, mode="edge")
    activity = np.max([p[i : i + ny, j : j + nx] for i in range(3) for j in range(3)], axis=0)
    margin = np.where(activity > TEXTURE * CELL * CELL * step, round(MARGIN_TEXTURE * CELL * CELL),
                      round(MARGIN_FLAT * CELL * CELL)) * step
    limit = MAX_DELTA * CELL * CELL
    change = np.zeros((ny, nx), dtype=np.int64)
    colour = (np.arange(ny)[:, None] + np.arange(nx)[None, :]) % 2
    for _ in range(PASSES):
        for c in (0, 1):  # a cell's neighbours all have the other colour: update one colour at a time
            r = _residual4(sums + change * 1000)
            along = target * r
            short = (colour == c) & (along < margin) & (np.abs(r) <= window)
            need = -(-(margin - along) // step)  # pixel-levels towards the target
            change = np.where(short, np.clip(change + target * need, -limit, limit), change)
    whole = change // (CELL * CELL)  # floor: the rest (0..15 pixel-levels) is dithered
    rest = change - whole * CELL * CELL
    full = np.repeat(np.repeat(whole.astype(np.int16), CELL, axis=0), CELL, axis=1)
    full += np.repeat(np.repeat(rest.astype(np.int16), CELL, axis=0), CELL, axis=1) > np.tile(_DITHER, (ny, nx))
    out = tile.astype(np.int16)
    out += full[:h, :w, None]
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def watermark_image(rgb: np.ndarray, payload: Payload, *, chunk: int = CHUNK) -> np.ndarray:
    """A whole image marked chunk by chunk on its ``chunk`` grid: the bytes the chunk-wise writers produce."""
    _check_rgb(rgb, "The image to watermark")
    if chunk <= 0 or chunk % CELL:
        raise WatermarkError(f"Chunk size must be a positive multiple of {CELL} px, got {chunk}.")
    out = np.empty_like(rgb)
    for y in range(0, rgb.shape[0], chunk):
        for x in range(0, rgb.shape[1], chunk):
            out[y : y + chunk, x : x + chunk] = embed_watermark(rgb[y : y + chunk, x : x + chunk], payload,
                                                                origin=(y, x))
    return out


# --------------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Detection:
    """What :func:`detect_watermark` found in one image."""

    found: bool  # z ≥ threshold
    z: float  # sync correlation in standard deviations (close to N(0, 1) without a watermark)
    threshold: float
    scale: int  # level-0 px per image px where it was strongest (1, 2 or 4; 0: not checked)
    payload: str | None  # 12 hex digits, when found and its CRC, tag and version check out
    record_hash: str | None  # 8 hex digits of the payload: the provenance record's hash
    known_bit_errors: int  # wrong bits among the 16 known ones (tag, version) before correction; ~8 if random
    corrected_bits: int  # weak bits flipped to make the CRC check out (0–2)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _integral(luma: np.ndarray) -> np.ndarray:
    ii = np.zeros((luma.shape[0] + 1, luma.shape[1] + 1), dtype=np.int64)
    ii[1:, 1:] = luma.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    return ii


def _cell_sums(ii: np.ndarray, py: int, px: int, c: int) -> np.ndarray:
    ny, nx = (ii.shape[0] - 1 - py) // c, (ii.shape[1] - 1 - px) // c
    s = ii[np.ix_(py + c * np.arange(ny + 1), px + c * np.arange(nx + 1))]
    return s[1:, 1:] - s[:-1, 1:] - s[1:, :-1] + s[:-1, :-1]


def _fold(x: np.ndarray) -> np.ndarray:
    """Sum of the cells that share a pattern position (cell (i, j) → ((i+1) % P, (j+1) % P): x starts at cell 1)."""
    ny, nx = x.shape
    padded = np.zeros((-(-ny // PERIOD) * PERIOD, -(-nx // PERIOD) * PERIOD))
    padded[:ny, :nx] = x
    folded = padded.reshape(padded.shape[0] // PERIOD, PERIOD, padded.shape[1] // PERIOD, PERIOD).sum(axis=(0, 2))
    return np.roll(folded, (1, 1), axis=(0, 1))


def _trials(ii: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """(scale, residuals in grey levels) for every scale and sub-cell phase."""
    for scale in SCALES:
        c = CELL // scale
        for py in range(c):
            for px in range(c):
                sums = _cell_sums(ii, py, px, c)
                if min(sums.shape) < 3:
                    continue
                r = 4 * sums[1:-1, 1:-1] - sums[:-2, 1:-1] - sums[2:, 1:-1] - sums[1:-1, :-2] - sums[1:-1, 2:]
                yield scale, r / (4 * 1000 * c * c)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Luma ×1000 (int64) of a uint8 grey or RGB(A) image; WatermarkError for anything else."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise WatermarkError(f"The image to check must be uint8 grey (H, W) or RGB (H, W, 3), got {arr.dtype} "
                             f"{arr.shape}.")
    if arr.ndim == 2:
        return arr.astype(np.int32) * 1000
    rgb = arr.astype(np.int32)
    return rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114  # ITU-R BT.601 luma ×1000, as JPEG uses


def correlations(luma: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Every trial of the search: (scale, z for all PERIOD×PERIOD offsets, folded signs, folded weights).

    One trial per scale, sub-cell phase and window (detector hypotheses: ``z.size`` each); the benchmark
    counts them to calibrate :data:`Z_THRESHOLD`.
    """
    for scale, r in _trials(_integral(luma)):
        template, template_sq = _TEMPLATES[scale]
        for window in (WINDOW, np.inf):  # the window keeps flat cells; no window copes with contrast stretches
            x = np.where(np.abs(r) <= window, np.sign(r), 0.0)
            f, g = _fold(x), _fold(x * x)
            num = np.real(np.fft.ifft2(np.fft.fft2(f) * template))
            den = np.real(np.fft.ifft2(np.fft.fft2(g) * template_sq))
            yield scale, np.where(den > 1e-9, num / np.sqrt(np.maximum(den, 1e-9)), 0.0), f, g


def detect_watermark(rgb: np.ndarray) -> Detection:
    """Look for the watermark in an RGB (or grey) uint8 image of any size ≥ :data:`MIN_SIDE` px, at any offset."""
    luma = _luma(rgb)
    if min(luma.shape) < MIN_SIDE:
        return Detection(False, 0.0, Z_THRESHOLD, 0, None, None, _KNOWN_BITS, 0,
                         f"image smaller than {MIN_SIDE} px: not checked")
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    for scale, z, f, g in correlations(luma):
        k = np.unravel_index(int(np.argmax(z)), z.shape)
        if best is None or z[k] > best[0]:
            shift = (-int(k[0]), -int(k[1]))
            best = (float(z[k]), scale, np.roll(f, shift, axis=(0, 1)), np.roll(g, shift, axis=(0, 1)))
    if best is None:
        return Detection(False, 0.0, Z_THRESHOLD, 0, None, None, _KNOWN_BITS, 0, "no cells to check")
    return _decode(*best)


def _direct_reading(f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The 64 coded bits as z per bit (sign: the bit; size: how sure): each bit's cells against its chips."""
    carriers = _ROLE >= 0
    direct = np.bincount(_ROLE[carriers], weights=(_CHIPS * f)[carriers], minlength=N_BITS)
    spread = np.bincount(_ROLE[carriers], weights=g[carriers], minlength=N_BITS)
    return direct / np.sqrt(np.maximum(spread, 1e-12))


def _least_squares_reading(scale: int, f: np.ndarray) -> np.ndarray:
    """The bits by least squares on the frequencies the sync uses (sync and bits fitted together).

    Better where JPEG-grid patterns are strong (the 4× level): there, dropping those frequencies mixes the sync
    into each bit's cells, and only a joint fit separates them again.
    """
    design, pinv, spread = _least_squares(scale)
    target = np.real(np.fft.ifft2(np.fft.fft2(f) * _KEEP[scale])).ravel()
    coef = np.einsum("ji,i->j", pinv, target)
    resid = target - np.einsum("ij,j->i", design, coef)
    var = spread * float(resid @ resid) / max(1, int(_KEEP[scale].sum()) - N_BITS - 1)
    return coef[1:] * np.sign(coef[0]) / np.sqrt(np.maximum(var[1:], 1e-12))


def _read_payload(readings: list[np.ndarray]) -> tuple[Payload | None, int]:
    """(payload, bits corrected) whose CRC, tag and version check out, flipping up to CHASE_FLIPS weak bits."""
    for n in range(CHASE_FLIPS + 1):
        for bit_z in readings:
            weakest = np.argsort(np.abs(bit_z), kind="stable")[:CHASE_BITS]
            for flips in itertools.combinations(weakest, n):
                bits = bit_z > 0
                bits[list(flips)] ^= True
                payload, crc_ok = Payload.from_coded_bits(bits)
                if crc_ok and payload.tag == TAG and payload.version == FORMAT_VERSION:
                    return payload, n
    return None, 0


def _decode(z: float, scale: int, f: np.ndarray, g: np.ndarray) -> Detection:
    """The decision, and the payload read at the best alignment."""
    direct = _direct_reading(f, g)
    known = Payload(record_hash=0).coded_bits()[:_KNOWN_BITS]
    errors = int(np.count_nonzero((direct[:_KNOWN_BITS] > 0) != known))
    if z < Z_THRESHOLD:
        return Detection(False, round(z, 2), Z_THRESHOLD, scale, None, None, errors, 0,
                         f"no watermark (z {z:.1f} < {Z_THRESHOLD:g})")
    payload, corrected = _read_payload([direct, _least_squares_reading(scale, f)])
    if payload is None:
        return Detection(True, round(z, 2), Z_THRESHOLD, scale, None, None, errors, 0,
                         "watermark found, but its payload is too damaged to read")
    return Detection(True, round(z, 2), Z_THRESHOLD, scale, payload.hex, f"{payload.record_hash:08x}", errors,
                     corrected)
