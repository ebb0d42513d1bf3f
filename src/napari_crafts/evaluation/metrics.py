"""How close is generated H&E to the real H&E it should match: the CRAFTS paper's pixel metrics and its table.

Pixel metrics compare a generated and a real RGB image of the same shape, on a 0–255 scale
(``data_range=255``): SSIM↑, PSNR↑ (dB), MSE↓ and NCC↑, optionally only over a mask (by default the real
image's tissue, see :func:`tissue_mask`). Large aligned images (numpy, dask, zarr) are scored tile by tile,
reading one tile at a time (:func:`tile_metrics`, :func:`aggregate`, :func:`metric_map`).

The embedding metrics (PLIP-FID↓, PLIP-I↑, PLIP-T↑ with a CLIP-family model) are in
:mod:`napari_crafts.evaluation.plip`.
:func:`scoring.evaluate_pairs` computes all of them for one dataset (the PLIP ones when given a
:class:`~napari_crafts.plip.ClipScorer`), :func:`format_table` prints the paper's table.

numpy/scikit-image/scipy only at import time; torch and transformers load only when a
:class:`~napari_crafts.plip.ClipScorer` is made.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .inputs import EvaluationError, read_picture

#: Images are compared on the 0–255 scale of 8-bit RGB.
DATA_RANGE = 255.0
#: Pixel metrics, in the paper's column order.
PIXEL_METRICS = ("SSIM", "PSNR", "MSE", "NCC")
#: Table columns and their headers (arrow: which direction is better).
COLUMNS = {"SSIM": "SSIM↑", "PSNR": "PSNR↑", "MSE": "MSE↓", "NCC": "NCC↑",
           "PLIP-FID": "PLIP-FID↓", "PLIP-I": "PLIP-I↑", "PLIP-T": "PLIP-T↑"}
_DECIMALS = {"SSIM": 4, "PSNR": 2, "MSE": 2, "NCC": 4, "PLIP-FID": 2, "PLIP-I": 4, "PLIP-T": 4}
#: Optical density above which a pixel counts as tissue (see :func:`tissue_mask`).
TISSUE_OD_THRESHOLD = 0.1
#: SSIM window (scikit-image's default, 7×7 uniform); SSIM is undefined within half a window of the border.
SSIM_WIN = 7
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

#: A mask argument: "tissue" (of the real image), None (every pixel) or a boolean (H, W) array.
MaskSpec = Literal["tissue"] | np.ndarray | None


# --- pixel metrics -------------------------------------------------------------------------------------


def tissue_mask(rgb: np.ndarray, *, od_threshold: float = TISSUE_OD_THRESHOLD) -> np.ndarray:
    """Boolean (H, W) mask of pixels that are tissue rather than background glass.

    Rule: optical density ``OD_c = -log10((I_c + 1) / 256)`` per channel; a pixel is tissue when its largest
    OD exceeds ``od_threshold`` (0.1: some channel darker than ~203/255). Glass sits near OD 0.02 (RGB ~240);
    the faintest eosin is above 0.1. Pixel-wise, no morphology: gaps between fibres stay holes, which is
    right for comparing pixels.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"tissue_mask expects an RGB image (H, W, 3), got shape {rgb.shape}.")
    od = -np.log10((rgb[..., :3].astype(np.float32) + 1.0) / 256.0)
    return od.max(axis=-1) > od_threshold


def _as_pair(generated: Any, real: Any) -> tuple[np.ndarray, np.ndarray]:
    g, r = np.asarray(generated), np.asarray(real)
    if g.shape != r.shape:
        raise ValueError(
            f"Generated image {g.shape} and real image {r.shape} differ in shape: "
            "crop or resample them to the same size (and pixel size) first."
        )
    if g.ndim != 3 or g.shape[-1] != 3:
        raise ValueError(f"Expected RGB images of shape (H, W, 3) on a 0–255 scale, got {g.shape}.")
    return g.astype(np.float64), r.astype(np.float64)


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    if m.shape != tuple(shape[:2]):
        raise ValueError(f"Mask {m.shape} does not match the images {tuple(shape[:2])}.")
    if not m.any():
        raise ValueError(
            "The tissue mask is empty: no pixel to compare. Pick a region with tissue, "
            "or pass mask=None to compare every pixel."
        )
    return m


def _select(a: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    return a if m is None else a[m]


def _mse(g: np.ndarray, r: np.ndarray, m: np.ndarray | None) -> float:
    from skimage.metrics import mean_squared_error

    return float(mean_squared_error(_select(g, m), _select(r, m)))


def _psnr(g: np.ndarray, r: np.ndarray, m: np.ndarray | None) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    gs, rs = _select(g, m), _select(r, m)
    if np.array_equal(gs, rs):
        return math.inf  # identical: MSE 0, scikit-image would warn about a division by zero
    return float(peak_signal_noise_ratio(rs, gs, data_range=DATA_RANGE))


def _ncc(g: np.ndarray, r: np.ndarray, m: np.ndarray | None, *, warn: bool = True) -> float:
    a, b = _select(g, m).ravel(), _select(r, m).ravel()
    a, b = a - a.mean(), b - b.mean()
    # plain sums, not BLAS dot products: those are needlessly slow on small arrays with many BLAS threads
    na, nb = math.sqrt(float(np.sum(a * a))), math.sqrt(float(np.sum(b * b)))
    if na == 0.0 or nb == 0.0:
        if warn:
            which = "both images are" if na == nb else ("the generated image is" if na == 0.0 else "the real image is")
            warnings.warn(f"NCC is undefined (nan): {which} constant over the compared pixels.", stacklevel=3)
        return math.nan
    return float(np.sum(a * b)) / (na * nb)


def _ssim_map(g: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM averaged over channels (scikit-image, 7×7 uniform window, data_range 255)."""
    from skimage.metrics import structural_similarity

    _, full = structural_similarity(g, r, channel_axis=-1, data_range=DATA_RANGE, full=True)
    return np.asarray(full).mean(axis=-1)


def _interior(shape: tuple[int, int], origin: tuple[int, int] = (0, 0),
              image: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels of a window at ``origin`` of an ``image``-sized image at least half an SSIM window from its border."""
    pad = SSIM_WIN // 2
    h, w = image or shape
    ys = np.arange(origin[0], origin[0] + shape[0])
    xs = np.arange(origin[1], origin[1] + shape[1])
    return ((ys >= pad) & (ys < h - pad))[:, None] & ((xs >= pad) & (xs < w - pad))[None, :]


def _ssim(g: np.ndarray, r: np.ndarray, m: np.ndarray | None) -> float:
    valid = _interior(g.shape[:2])
    if m is not None:
        valid &= m
    if not valid.any():
        warnings.warn(f"SSIM is undefined (nan): no compared pixel lies {SSIM_WIN // 2} px inside the border.",
                      stacklevel=3)
        return math.nan
    return float(_ssim_map(g, r)[valid].mean())


def ssim(generated: np.ndarray, real: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Structural similarity (1 = identical), scikit-image with ``channel_axis=-1, data_range=255``.

    The mean of the SSIM map over channels and over pixels at least 3 px (half the 7×7 window) inside the
    border — exactly scikit-image's mean SSIM; with a mask, over those pixels that are also in the mask.
    """
    g, r = _as_pair(generated, real)
    return _ssim(g, r, _as_mask(mask, g.shape))


def psnr(generated: np.ndarray, real: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10·log10(255² / MSE)`` (``data_range=255``); ``inf`` if identical."""
    g, r = _as_pair(generated, real)
    return _psnr(g, r, _as_mask(mask, g.shape))


def mse(generated: np.ndarray, real: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Mean squared error over pixels (in the mask) and channels, on the 0–255 scale."""
    g, r = _as_pair(generated, real)
    return _mse(g, r, _as_mask(mask, g.shape))


def ncc(generated: np.ndarray, real: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Zero-mean normalised cross-correlation over all (masked) pixels and channels, in [-1, 1].

    ``NCC = Σ (g − ḡ)(r − r̄) / sqrt(Σ (g − ḡ)² · Σ (r − r̄)²)``, means taken over the same pixels and
    channels. 1 for identical images (and for ``a·x + b``, a > 0), −1 for a negated one; ``nan`` with a
    warning when either image is constant there. Insensitive to scale, so independent of the data range.
    """
    g, r = _as_pair(generated, real)
    return _ncc(g, r, _as_mask(mask, g.shape))


def pixel_metrics(generated: np.ndarray, real: np.ndarray, *, mask: np.ndarray | None = None) -> dict[str, float]:
    """SSIM, PSNR, MSE and NCC of ``generated`` against ``real`` (both (H, W, 3), 0–255), optionally masked."""
    g, r = _as_pair(generated, real)
    m = _as_mask(mask, g.shape)
    return {"SSIM": _ssim(g, r, m), "PSNR": _psnr(g, r, m), "MSE": _mse(g, r, m), "NCC": _ncc(g, r, m)}


# ------------------------------------------------------------------------- does it look like H&E (no reference)


def haematoxylin_ratio(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Mean haematoxylin OD (rgb2hed channel 0) inside ``mask`` over its mean outside (NaN if one side is empty)."""
    from skimage.color import rgb2hed

    h = rgb2hed(np.asarray(rgb, np.uint8))[..., 0]
    inside, outside = h[mask], h[~mask]
    if inside.size == 0 or outside.size == 0:
        return float("nan")
    out = float(outside.mean())
    return float(inside.mean()) / out if out > 0 else float("nan")


def red_over_green(rgb: np.ndarray) -> float:
    """Fraction of tissue pixels (``metrics.tissue_mask``) with red > green (NaN with no tissue)."""
    rgb = np.asarray(rgb, np.uint8)
    tissue = tissue_mask(rgb)
    if not tissue.any():
        return float("nan")
    return float((rgb[..., 0].astype(int) > rgb[..., 1].astype(int))[tissue].mean())


def he_checks(rgb: np.ndarray, nuclei: np.ndarray | None) -> dict[str, float]:
    """The H&E sanity numbers of one image: H-OD ratio (when a nuclei mask is given), red > green, mean RGB."""
    out: dict[str, float] = {}
    if nuclei is not None:
        out["H_ratio"] = haematoxylin_ratio(rgb, nuclei)
    out["red_gt_green"] = red_over_green(rgb)
    tissue = tissue_mask(rgb)
    mean = rgb[tissue].mean(0) if tissue.any() else np.full(3, np.nan)
    out.update({"mean_R": float(mean[0]), "mean_G": float(mean[1]), "mean_B": float(mean[2])})
    return out


def check_same_scale(mpp_a: float | None, mpp_b: float | None, *, resample: bool,
                     image: np.ndarray | None = None, rtol: float = 0.02) -> np.ndarray | None:
    """Make sure an image of pixel size ``mpp_a`` (µm/px) can be compared with one of ``mpp_b``.

    Equal within ``rtol``, or either unknown (None): ``image`` comes back unchanged. Different and
    ``resample``: ``image`` is resampled to ``mpp_b`` (as :func:`~napari_crafts.evaluation.inputs.align_images`
    does: anti-aliased bilinear, dtype kept); shapes are checked afterwards by the metrics. Different and not
    ``resample``: ValueError.
    """
    if mpp_a is None or mpp_b is None or math.isclose(mpp_a, mpp_b, rel_tol=rtol):
        return image
    if not resample:
        raise ValueError(
            f"Pixel sizes differ: {mpp_a:g} µm/px vs {mpp_b:g} µm/px, so pixels cannot be compared one to one. "
            "Use --resample (resample=True) to resample the first image to the second pixel size."
        )
    if image is None:
        return None
    from .inputs import rescaled

    return np.asarray(rescaled(np.asarray(image), mpp_a, mpp_b))


# --- large images, tile by tile ------------------------------------------------------------------------


@dataclass(frozen=True)
class TileResult:
    """Metrics of one tile: top-left corner (y, x) and size in pixels, pixels compared, metric values."""

    y: int
    x: int
    height: int
    width: int
    n_pixels: int
    metrics: dict[str, float]


def iter_tile_metrics(generated: Any, real: Any, *, tile: int = 512, mask: MaskSpec = "tissue",
                      od_threshold: float = TISSUE_OD_THRESHOLD) -> Iterator[TileResult]:
    """Yield :class:`TileResult` tile by tile (row-major) over two aligned (H, W, 3) arrays, numpy or lazy.

    Only one tile (plus a 3 px halo, so SSIM at the tile's pixels equals whole-image SSIM) is read at a
    time. ``mask``: "tissue" (of the real image), None (all pixels) or a boolean (H, W) array (lazy ok).
    Tiles with nothing to compare are skipped. NCC of a constant tile is nan, silently.
    """
    if tuple(generated.shape) != tuple(real.shape):
        raise ValueError(f"Generated image {tuple(generated.shape)} and real image {tuple(real.shape)} differ in "
                         "shape: crop or resample them to the same size (and pixel size) first.")
    if tile <= 0:
        raise ValueError(f"Tile size must be positive, got {tile}.")
    h, w = int(real.shape[0]), int(real.shape[1])
    if isinstance(mask, str) and mask != "tissue":
        raise ValueError(f'mask must be "tissue", None or a boolean array, got {mask!r}.')
    if mask is not None and not isinstance(mask, str) and tuple(mask.shape) != (h, w):
        raise ValueError(f"Mask {tuple(mask.shape)} does not match the images {(h, w)}.")
    pad = SSIM_WIN // 2
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            y1, x1 = min(y + tile, h), min(x + tile, w)
            ya, xa, yb, xb = max(y - pad, 0), max(x - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
            inner = (slice(y - ya, y1 - ya), slice(x - xa, x1 - xa))
            r = np.asarray(real[ya:yb, xa:xb]).astype(np.float64)
            if isinstance(mask, str):
                m = tissue_mask(r[inner], od_threshold=od_threshold)
            elif mask is None:
                m = np.ones((y1 - y, x1 - x), dtype=bool)
            else:
                m = np.asarray(mask[y:y1, x:x1], dtype=bool)
            if not m.any():
                continue
            g = np.asarray(generated[ya:yb, xa:xb]).astype(np.float64)
            gi, ri = g[inner], r[inner]
            valid = _interior((y1 - y, x1 - x), (y, x), (h, w)) & m
            s = float(_ssim_map(g, r)[inner][valid].mean()) if valid.any() else math.nan
            metrics = {"SSIM": s, "PSNR": _psnr(gi, ri, m), "MSE": _mse(gi, ri, m), "NCC": _ncc(gi, ri, m, warn=False)}
            yield TileResult(y, x, y1 - y, x1 - x, int(m.sum()), metrics)


def tile_metrics(generated: Any, real: Any, *, tile: int = 512, mask: MaskSpec = "tissue",
                 od_threshold: float = TISSUE_OD_THRESHOLD) -> list[TileResult]:
    """All :class:`TileResult` of :func:`iter_tile_metrics` (use the iterator to show progress or cancel)."""
    return list(iter_tile_metrics(generated, real, tile=tile, mask=mask, od_threshold=od_threshold))


def aggregate(results: Sequence[TileResult]) -> dict[str, float]:
    """Region metrics from tiles: SSIM, MSE, NCC averaged over tiles weighted by compared (tissue) pixels.

    So MSE equals the MSE over all compared pixels of the region; tiles where a metric is nan are left out
    of that metric. PSNR is recomputed from the region's MSE (a mean of dB values would be inf as soon as one
    tile matched exactly). Also returns "tiles" and "pixels" (counts).
    """
    if not results:
        raise ValueError("No tile had anything to compare (no tissue?): nothing to aggregate.")
    weights = np.array([t.n_pixels for t in results], dtype=np.float64)
    out: dict[str, float] = {}
    for key in ("SSIM", "MSE", "NCC"):
        values = np.array([t.metrics[key] for t in results], dtype=np.float64)
        ok = np.isfinite(values)
        out[key] = float(np.average(values[ok], weights=weights[ok])) if ok.any() else math.nan
    out["PSNR"] = math.inf if out["MSE"] == 0 else 10 * math.log10(DATA_RANGE**2 / out["MSE"])
    out = {k: out[k] for k in PIXEL_METRICS}
    out.update(tiles=float(len(results)), pixels=float(weights.sum()))
    return out


def metric_map(results: Sequence[TileResult], shape: tuple[int, ...], tile: int, key: str = "SSIM") -> np.ndarray:
    """(rows, cols) array of one metric per tile, nan for skipped tiles: a heat map layer.

    In napari, add it with ``scale = tile · s`` and ``translate = t + (tile − 1)/2 · s``, where ``s`` and
    ``t`` are the image layer's scale and translate, so each cell covers its tile.
    """
    grid = np.full((-(-int(shape[0]) // tile), -(-int(shape[1]) // tile)), np.nan, dtype=np.float32)
    for t in results:
        grid[t.y // tile, t.x // tile] = t.metrics[key]
    return grid


def ssim_map_tiles(generated: Any, real: Any, *, tile: int = 512, mask: MaskSpec = "tissue") -> np.ndarray:
    """Per-tile SSIM as a small 2-D array (nan where a tile was skipped); see :func:`metric_map`."""
    return metric_map(tile_metrics(generated, real, tile=tile, mask=mask), real.shape, tile, "SSIM")


# --- datasets: evaluation, folders, tables -------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Metrics of one dataset or slide: pixel metric mean ± std over pairs, PLIP metrics, provenance."""

    n: int
    ssim: float
    psnr: float
    mse: float
    ncc: float
    ssim_std: float = math.nan
    psnr_std: float = math.nan
    mse_std: float = math.nan
    ncc_std: float = math.nan
    plip_fid: float = math.nan
    plip_i: float = math.nan
    plip_t: float = math.nan
    model: str | None = None
    prompt: str | None = None
    mask: str | None = "tissue"
    notes: list[str] = field(default_factory=list)

    def to_row(self) -> dict[str, float]:
        """The table's columns: SSIM, PSNR, MSE, NCC, PLIP-FID, PLIP-I, PLIP-T."""
        return {key: getattr(self, key.lower().replace("-", "_")) for key in COLUMNS}

    def to_dict(self) -> dict[str, Any]:
        """All fields (floats may be nan or inf; :func:`write_results` makes JSON of them)."""
        return asdict(self)


def _read_rgb(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            image = np.asarray(tifffile.imread(path))
        except (OSError, ValueError) as err:  # TiffFileError is a ValueError
            raise EvaluationError(f"{path}: not a readable TIFF image ({err}): replace or remove it.") from None
    else:
        image = read_picture(path)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"{path.name}: expected an 8-bit RGB image, got {image.dtype} of shape {image.shape}.")
    return image[..., :3]


def load_tile_folder(path: str | Path) -> dict[str, np.ndarray]:
    """Read every png/jpg/tif in a folder as RGB uint8, keyed by file name without its suffix."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"No such folder: {folder}")
    tiles: dict[str, np.ndarray] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES:
            if f.stem in tiles:
                raise ValueError(f"Two images named '{f.stem}' in {folder} (different suffixes): keep one.")
            tiles[f.stem] = _read_rgb(f)
    if not tiles:
        raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    return tiles


def pair_tile_folders(generated_dir: str | Path,
                      real_dir: str | Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(names, generated, real) of tiles paired by file name (suffix ignored) between two folders.

    Every file must have a partner: otherwise ValueError listing the unpaired names on each side.
    """
    gen, real = load_tile_folder(generated_dir), load_tile_folder(real_dir)
    only_gen, only_real = sorted(gen.keys() - real.keys()), sorted(real.keys() - gen.keys())
    if only_gen or only_real:
        raise ValueError(
            "Unpaired tiles (generated and real are paired by file name): "
            f"only in {generated_dir}: {only_gen or 'none'}; only in {real_dir}: {only_real or 'none'}."
        )
    names = sorted(gen)
    return names, [gen[n] for n in names], [real[n] for n in names]


def _fmt(value: float, key: str) -> str:
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{_DECIMALS[key]}f}"


def format_table(rows: dict[str, EvaluationResult]) -> str:
    """Markdown table in the paper's layout: one row per dataset/slide, SSIM↑ … PLIP-T↑ ("–": not computed)."""
    lines = ["| Dataset | " + " | ".join(COLUMNS.values()) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, result in rows.items():
        row = result.to_row()
        lines.append(f"| {name} | " + " | ".join(_fmt(row[k], k) for k in COLUMNS) + " |")
    models = sorted({r.model for r in rows.values() if r.model})
    if models:
        lines.append("")
        lines.append(f"PLIP metrics with {', '.join(models)}.")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_results(rows: dict[str, EvaluationResult], csv_path: str | Path | None = None,
                  json_path: str | Path | None = None) -> None:
    """Write all fields of each row to CSV (one line per dataset) and/or strict JSON ({dataset: fields}).

    In JSON, nan becomes null and ±inf the strings "inf"/"-inf"; CSV writes them as nan/inf.
    """
    if csv_path is not None:
        dicts = [{"dataset": name, **r.to_dict()} for name, r in rows.items()]
        with open(csv_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dicts[0]) if dicts else ["dataset"])
            writer.writeheader()
            for d in dicts:
                writer.writerow({k: "; ".join(v) if isinstance(v, list) else v for k, v in d.items()})
    if json_path is not None:
        data = {name: {k: _jsonable(v) for k, v in r.to_dict().items()} for name, r in rows.items()}
        Path(json_path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
