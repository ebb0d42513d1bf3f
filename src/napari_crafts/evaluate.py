"""Evaluate synthetic H&E against the real H&E it should match: the CRAFTS paper's table on your own data.

    napari-crafts evaluate GENERATED REAL [--prompt TEXT] [--clip-model vinid/plip|FOLDER|none] [--csv F] [--json F]

GENERATED and REAL are either two folders of tiles paired by file name (scored pair by pair with
:func:`metrics.evaluate_pairs`), or two aligned images — whole-slide files, (OME-)TIFF, OME-Zarr, PNG/JPEG —
read lazily and scored tile by tile on level 0 (:func:`evaluate_images`, also behind the napari "Compare"
widget). Qt-free; torch and transformers load only when a CLIP model is asked for (:func:`load_scorer`).

Steps for two images: 1. check both are RGB, their pixel sizes (resample the generated image to the real
one's when asked) and their shapes; 2. pixel metrics tile by tile (one tile in memory at a time);
3. aggregate over tiles, weighted by compared pixels; 4. PLIP metrics on at most ``max_tiles`` tiles.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from . import plip as P
from .generate import run  # drives any of our generators (evaluation, generation) to its result
from .metrics import EvaluationResult, MaskSpec, TileResult

#: Default tile side in pixels (the paper's models work on 512 px tiles).
DEFAULT_TILE = 512
#: At most this many tiles of an image pair are embedded for the PLIP metrics (chosen evenly, deterministic).
MAX_EMBED_TILES = 256
#: ``--clip-model`` values that mean "no PLIP metrics".
NO_MODEL = ("", "none")
#: Single-image formats read whole (no pyramid, no pixel size).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLI_ADVICE = "pass a local folder with --clip-model PATH, or --clip-model none to skip the PLIP metrics"
NO_TISSUE = ("The tissue mask is empty: no tile of the real image holds tissue (all looks like background glass). "
             "Pick a region with tissue, or turn the tissue mask off (--no-mask).")


class EvaluationError(ValueError):
    """Input that cannot be evaluated; the message names what was wrong and what to do (one line)."""


@dataclass(frozen=True)
class EvalProgress:
    """One step of an evaluation: a tile scored (``stage`` "tiles") or a batch embedded ("embeddings")."""

    stage: str
    done: int
    total: int
    tile: TileResult | None = None


@dataclass
class ImageEvaluation:
    """Result of :func:`iter_evaluate_images`: the table row, every scored tile and the tile grid."""

    result: EvaluationResult
    tiles: list[TileResult]
    shape: tuple[int, int]
    tile: int
    embedded: int = 0

    def heat_map(self, key: str = "SSIM") -> np.ndarray:
        """(rows, cols) float32 map of one metric per tile, nan where a tile had nothing to compare."""
        return M.metric_map(self.tiles, self.shape, self.tile, key)


# --- aligning two images -------------------------------------------------------------------------------


class ResampledImage:
    """Lazy view of an RGB image on another pixel grid: output pixel (i, j) samples the source at
    (``scale[0]·i + offset[0]``, ``scale[1]·j + offset[1]``) in source pixels.

    Bilinear interpolation; when shrinking (scale > 1), a Gaussian of σ = (scale − 1)/2 first (as
    scikit-image's anti-aliasing). Edges repeat the nearest pixel. Each slice reads only the source window
    it needs, with enough margin that any window equals the same part of the whole resampled image.
    """

    ndim = 3

    def __init__(self, source: Any, shape_yx: tuple[int, int], scale: Sequence[float],
                 offset: Sequence[float]) -> None:
        self.source = source
        self.shape = (int(shape_yx[0]), int(shape_yx[1]), 3)
        self.dtype = np.dtype(source.dtype)
        self.scale = (float(scale[0]), float(scale[1]))
        self.offset = (float(offset[0]), float(offset[1]))
        self.sigma = tuple(max(0.0, (s - 1.0) / 2.0) for s in self.scale)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        ys, xs = (tuple(key) + (slice(None), slice(None)))[:2]
        if not (isinstance(ys, slice) and isinstance(xs, slice)) or ys.step not in (None, 1) or xs.step not in (None, 1):
            raise IndexError("ResampledImage supports only contiguous slices of rows and columns.")
        i0, i1, _ = ys.indices(self.shape[0])
        j0, j1, _ = xs.indices(self.shape[1])
        out = self._window(i0, max(i0, i1), j0, max(j0, j1))
        return out[(slice(None), slice(None), *key[2:])] if len(key) > 2 else out

    def _axis(self, axis: int, start: int, stop: int) -> tuple[np.ndarray, int, int]:
        """Source coordinates of output pixels [start, stop) on ``axis`` and the source rows to read."""
        size = int(self.source.shape[axis])
        coords = np.clip(self.scale[axis] * np.arange(start, stop) + self.offset[axis], 0, size - 1)
        margin = int(4.0 * self.sigma[axis] + 0.5) + 1  # scipy's Gaussian radius (truncate 4) + interpolation
        lo = max(int(np.floor(coords.min())) - margin, 0) if len(coords) else 0
        hi = min(int(np.floor(coords.max())) + margin + 2, size) if len(coords) else 0
        return coords - lo, lo, hi

    def _window(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        from scipy import ndimage

        if i1 == i0 or j1 == j0:
            return np.zeros((i1 - i0, j1 - j0, 3), self.dtype)
        cy, ya, yb = self._axis(0, i0, i1)
        cx, xa, xb = self._axis(1, j0, j1)
        win = np.asarray(self.source[ya:yb, xa:xb])[..., :3].astype(np.float64)
        if any(self.sigma):
            win = ndimage.gaussian_filter(win, sigma=(*self.sigma, 0), mode="nearest")
        grid = np.meshgrid(cy, cx, indexing="ij")
        out = np.stack([ndimage.map_coordinates(win[..., c], grid, order=1, mode="nearest", prefilter=False)
                        for c in range(3)], axis=-1)
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(self.dtype)
        return out.astype(self.dtype)


def _check_rgb(image: Any, what: str) -> Any:
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 3 or shape[-1] not in (3, 4):
        raise EvaluationError(f"The {what} image has shape {shape}: expected RGB (height, width, 3).")
    if shape[0] == 0 or shape[1] == 0:
        raise EvaluationError(f"The {what} image is empty ({shape[0]}×{shape[1]} px).")
    return image[..., :3] if shape[-1] == 4 else image


def align_images(generated: Any, real: Any, *, generated_mpp: float | None = None, real_mpp: float | None = None,
                 resample: bool = False) -> tuple[Any, Any, list[str]]:
    """Make two RGB images comparable pixel for pixel: (generated, real, notes), still lazy.

    Pixel sizes (µm/px) equal within 2 % or unknown: unchanged. Different: with ``resample`` the generated
    image becomes a :class:`ResampledImage` on the real image's grid (same top-left corner), else
    :class:`EvaluationError` naming both. Shapes must then match (after resampling, a 1 px rounding
    difference is cropped away); otherwise the error names both shapes.
    """
    generated, real = _check_rgb(generated, "generated"), _check_rgb(real, "real")
    notes: list[str] = []
    resampled = False
    if generated_mpp is None or real_mpp is None:
        if generated_mpp != real_mpp:
            which = "generated" if generated_mpp is None else "real"
            notes.append(f"Pixel size of the {which} image unknown: compared pixel to pixel.")
    elif not math.isclose(generated_mpp, real_mpp, rel_tol=0.02):
        if not resample:
            raise EvaluationError(
                f"Pixel sizes differ: generated {generated_mpp:g} µm/px, real {real_mpp:g} µm/px, so pixels cannot "
                "be compared one to one. Use --resample (resample=True) to resample the generated image to the "
                "real image's pixel size."
            )
        f = real_mpp / generated_mpp
        before = tuple(int(s) for s in generated.shape[:2])
        after = (max(1, round(before[0] / f)), max(1, round(before[1] / f)))
        generated = ResampledImage(generated, after, (f, f), (0.5 * f - 0.5, 0.5 * f - 0.5))
        resampled = True
        notes.append(f"Generated image resampled from {generated_mpp:g} to {real_mpp:g} µm/px "
                     f"({before[0]}×{before[1]} → {after[0]}×{after[1]} px).")
    g_shape, r_shape = tuple(int(s) for s in generated.shape), tuple(int(s) for s in real.shape)
    if g_shape != r_shape:
        dy, dx = abs(g_shape[0] - r_shape[0]), abs(g_shape[1] - r_shape[1])
        if not (resampled and dy <= 1 and dx <= 1):
            after = " after resampling" if resampled else ""
            raise EvaluationError(
                f"Generated image {g_shape}{after} and real image {r_shape} differ in size: they must cover the "
                "same area pixel for pixel. Crop both to the same region (and use --resample if their pixel "
                "sizes differ)."
            )
        h, w = min(g_shape[0], r_shape[0]), min(g_shape[1], r_shape[1])
        generated = ResampledImage(generated.source, (h, w), generated.scale, generated.offset)  # still lazy
        real = real[:h, :w]
        notes.append(f"Cropped to the common {h}×{w} px after resampling (rounding).")
    return generated, real, notes


# --- PLIP metrics ----------------------------------------------------------------------------------------


def _hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def load_scorer(model: str | Path | None, *, device: str | None = None,
                advice: str = CLI_ADVICE) -> P.ClipScorer | None:
    """The :class:`plip.ClipScorer` for ``model`` (local folder or hub id), or None for ""/"none".

    A hub id is looked up in the local cache first (no network); then fetched unless the hub is offline
    (``HF_HUB_OFFLINE``). Anything that fails is an :class:`EvaluationError` of one line ending in ``advice``.
    """
    ref = "" if model is None else str(model).strip()
    if ref.lower() in NO_MODEL:
        return None
    path = Path(ref).expanduser()
    if path.exists():
        try:
            return P.ClipScorer(path, device=device)
        except (OSError, ValueError) as err:
            cause = (str(err.__cause__ or err).strip().splitlines() or [""])[0]
            raise EvaluationError(f"Could not load the CLIP model from {path} ({cause}): {advice}.") from None
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        raise EvaluationError(f"CLIP model '{ref}' not found: it is neither a folder nor a hub id like "
                              f"'{P.PLIP_MODEL_ID}'; {advice}.")
    try:
        return P.ClipScorer(ref, device=device, local_files_only=True)  # cached: no network
    except OSError:
        pass
    if _hub_offline():
        raise EvaluationError(f"CLIP model '{ref}' is not in the local cache and the Hugging Face Hub is offline "
                              f"(HF_HUB_OFFLINE): {advice}.") from None
    try:
        return P.ClipScorer(ref, device=device)
    except OSError:
        raise EvaluationError(f"Could not fetch the CLIP model '{ref}' from the Hugging Face Hub (no connection, "
                              f"or no such model): {advice}.") from None


def _embed(scorer: P.ClipScorer, images: Sequence[np.ndarray], done: int,
           total: int) -> Generator[EvalProgress, None, np.ndarray]:
    parts = [np.empty((0, scorer.dim))]
    for start in range(0, len(images), scorer.batch_size):
        batch = images[start:start + scorer.batch_size]
        parts.append(scorer.image_embeddings(batch))
        yield EvalProgress("embeddings", done + start + len(batch), total)
    return np.concatenate(parts)


def iter_plip(result: EvaluationResult, scorer: P.ClipScorer, generated: Sequence[np.ndarray],
              real: Sequence[np.ndarray], *, prompt: str | None = None,
              allow_rank_deficient: bool = False) -> Generator[EvalProgress, None, EvaluationResult]:
    """Fill ``result``'s PLIP-I, PLIP-FID (enough samples, or ``allow_rank_deficient``) and PLIP-T (a prompt).

    Yields once per embedded batch; what could not be computed stays nan with a note saying why.
    """
    n = len(generated)
    gen_emb = yield from _embed(scorer, generated, 0, 2 * n)
    real_emb = yield from _embed(scorer, real, n, 2 * n)
    result.model = scorer.name
    result.plip_i = P.plip_i(gen_emb, real_emb)
    try:
        result.plip_fid = P.plip_fid(gen_emb, real_emb, allow_rank_deficient=allow_rank_deficient)
    except ValueError as err:
        result.notes.append(f"PLIP-FID not computed: {err} (CLI: more tiles, or --allow-small-fid).")
    if prompt:
        result.plip_t = P.plip_t(gen_emb, scorer.text_embeddings([prompt]))
    else:
        result.notes.append("PLIP-T not computed: it needs the prompt (--prompt).")
    return result


def pick_tiles(tiles: Sequence[TileResult], tile: int, max_tiles: int | None) -> list[TileResult]:
    """At most ``max_tiles`` tiles spread evenly over ``tiles`` (row-major), full-size ones when there are any."""
    full = [t for t in tiles if t.height == tile and t.width == tile]
    pool = full or list(tiles)
    if max_tiles is None or len(pool) <= max_tiles:
        return pool
    return [pool[i] for i in np.linspace(0, len(pool) - 1, max_tiles).round().astype(int)]


# --- two images ------------------------------------------------------------------------------------------


def _weighted_std(tiles: Sequence[TileResult], key: str, centre: float) -> float:
    v = np.array([t.metrics[key] for t in tiles], np.float64)
    w = np.array([t.n_pixels for t in tiles], np.float64)
    ok = np.isfinite(v)
    if ok.sum() < 2 or not math.isfinite(centre):
        return math.nan
    return float(np.sqrt(np.average((v[ok] - centre) ** 2, weights=w[ok])))


def _mask_name(mask: MaskSpec) -> str | None:
    return mask if isinstance(mask, str) or mask is None else "custom"


def iter_evaluate_images(generated: Any, real: Any, *, tile: int = DEFAULT_TILE, mask: MaskSpec = "tissue",
                         scorer: P.ClipScorer | None = None, prompt: str | None = None,
                         max_tiles: int | None = MAX_EMBED_TILES, allow_rank_deficient: bool = False,
                         generated_mpp: float | None = None, real_mpp: float | None = None,
                         resample: bool = False) -> Generator[EvalProgress, None, ImageEvaluation]:
    """Score two aligned RGB images (numpy, dask, zarr: read one tile at a time); yields progress.

    Returns an :class:`ImageEvaluation`: the row (SSIM/MSE/NCC pixel-weighted over tiles, PSNR from the
    region's MSE, their tile-to-tile spread as ``*_std``; PSNR's spread is not computed), every tile and the
    grid. PLIP metrics need a ``scorer``; they use at most ``max_tiles`` tiles (None: all).
    """
    if tile <= 0:
        raise EvaluationError(f"Tile size must be positive, got {tile}.")
    if max_tiles is not None and max_tiles < 1:
        raise EvaluationError(f"max_tiles must be at least 1 (or None for all), got {max_tiles}.")
    # 1. inputs
    gen, ref, notes = align_images(generated, real, generated_mpp=generated_mpp, real_mpp=real_mpp,
                                   resample=resample)
    h, w = int(ref.shape[0]), int(ref.shape[1])
    cols = -(-w // tile)
    total = -(-h // tile) * cols
    # 2. pixel metrics, tile by tile
    tiles: list[TileResult] = []
    for t in M.iter_tile_metrics(gen, ref, tile=tile, mask=mask):
        tiles.append(t)
        yield EvalProgress("tiles", (t.y // tile) * cols + t.x // tile + 1, total, t)
    if not tiles:
        raise EvaluationError(NO_TISSUE)
    # 3. aggregate
    agg = M.aggregate(tiles)
    if len(tiles) < total:
        notes.append(f"{total - len(tiles)} of {total} tiles had no tissue and were skipped.")
    result = EvaluationResult(
        n=len(tiles), ssim=agg["SSIM"], psnr=agg["PSNR"], mse=agg["MSE"], ncc=agg["NCC"],
        **{f"{k.lower()}_std": _weighted_std(tiles, k, agg[k]) for k in ("SSIM", "MSE", "NCC")},
        prompt=prompt or None, mask=_mask_name(mask), notes=notes,
    )
    # 4. PLIP metrics on a deterministic sample of tiles
    picked: list[TileResult] = []
    if scorer is not None:
        picked = pick_tiles(tiles, tile, max_tiles)
        boxes = [(slice(t.y, t.y + t.height), slice(t.x, t.x + t.width)) for t in picked]
        gen_tiles = [np.asarray(gen[b]) for b in boxes]
        real_tiles = [np.asarray(ref[b]) for b in boxes]
        notes.append(f"PLIP metrics on {len(picked)} of {len(tiles)} tiles.")
        yield from iter_plip(result, scorer, gen_tiles, real_tiles, prompt=prompt,
                             allow_rank_deficient=allow_rank_deficient)
    return ImageEvaluation(result, tiles, (h, w), tile, len(picked))


def evaluate_images(generated: Any, real: Any, *, tile: int = DEFAULT_TILE, mask: MaskSpec = "tissue",
                    scorer: P.ClipScorer | None = None, prompt: str | None = None,
                    max_tiles: int | None = MAX_EMBED_TILES, allow_rank_deficient: bool = False,
                    generated_mpp: float | None = None, real_mpp: float | None = None, resample: bool = False,
                    on_progress: Callable[[EvalProgress], None] | None = None) -> EvaluationResult:
    """The table row of two aligned RGB images; see :func:`iter_evaluate_images` (which also gives the tiles)."""
    job = iter_evaluate_images(generated, real, tile=tile, mask=mask, scorer=scorer, prompt=prompt,
                               max_tiles=max_tiles, allow_rank_deficient=allow_rank_deficient,
                               generated_mpp=generated_mpp, real_mpp=real_mpp, resample=resample)
    return run(job, on_progress).result


# --- folders and files -----------------------------------------------------------------------------------


def evaluate_folders(generated_dir: str | Path, real_dir: str | Path, *, mask: MaskSpec = "tissue",
                     scorer: P.ClipScorer | None = None, prompt: str | None = None,
                     allow_rank_deficient: bool = False,
                     on_progress: Callable[[EvalProgress], None] | None = None) -> EvaluationResult:
    """Tiles paired by file name: pixel metrics per pair (mean, std over pairs), PLIP metrics on all pairs."""
    names, gen, real = M.pair_tile_folders(generated_dir, real_dir)
    try:
        result = M.evaluate_pairs(gen, real, prompt=prompt or None, mask=mask)
    except ValueError as err:
        found = re.match(r"Pair (\d+): (.*)", str(err), re.S)
        if found is None:
            raise
        raise EvaluationError(f"Tile '{names[int(found[1])]}': {found[2]}") from None
    if scorer is not None:
        run(iter_plip(result, scorer, gen, real, prompt=prompt, allow_rank_deficient=allow_rank_deficient),
            on_progress)
    return result


def _source(path: Path) -> str:
    from .slide import is_supported

    if not path.exists():
        raise EvaluationError(f"{path}: no such file or folder.")
    if path.suffix.lower() in PICTURE_SUFFIXES:
        return "picture"
    if is_supported(path) or not path.is_dir():
        return "image"
    return "tiles"


def open_image(path: str | Path) -> tuple[Any, float | None]:
    """(level-0 RGB array, lazy where the format allows; µm/px or None) of a slide, TIFF, OME-Zarr or picture."""
    p = Path(path).expanduser()
    if _source(p) == "picture":
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im.convert("RGB")), None
    from .slide import open_slide

    slide = open_slide(p)
    if slide.kind != "rgb":
        raise EvaluationError(f"{p}: opened as {slide.kind}, not RGB: both images must be RGB H&E.")
    return slide.levels[0], slide.mpp


def evaluate_paths(generated: str | Path, real: str | Path, *, tile: int = DEFAULT_TILE, mask: MaskSpec = "tissue",
                   scorer: P.ClipScorer | None = None, prompt: str | None = None,
                   max_tiles: int | None = MAX_EMBED_TILES, allow_rank_deficient: bool = False,
                   resample: bool = False,
                   on_progress: Callable[[EvalProgress], None] | None = None) -> EvaluationResult:
    """Two folders of tiles (:func:`evaluate_folders`) or two image files/folders (:func:`evaluate_images`)."""
    gp, rp = Path(generated).expanduser(), Path(real).expanduser()
    kinds = (_source(gp) == "tiles", _source(rp) == "tiles")
    if kinds == (True, True):
        return evaluate_folders(gp, rp, mask=mask, scorer=scorer, prompt=prompt,
                                allow_rank_deficient=allow_rank_deficient, on_progress=on_progress)
    if kinds[0] != kinds[1]:
        what = {True: "a folder of tiles", False: "an image"}
        raise EvaluationError(f"Generated {gp} is {what[kinds[0]]} but real {rp} is {what[kinds[1]]}: give two "
                              "folders of tiles (paired by file name) or two images.")
    (g, g_mpp), (r, r_mpp) = open_image(gp), open_image(rp)
    return evaluate_images(g, r, tile=tile, mask=mask, scorer=scorer, prompt=prompt, max_tiles=max_tiles,
                           allow_rank_deficient=allow_rank_deficient, generated_mpp=g_mpp, real_mpp=r_mpp,
                           resample=resample, on_progress=on_progress)


# --- command line ----------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``napari-crafts evaluate`` arguments."""
    parser.add_argument("generated", help="synthetic H&E: a folder of tiles, or a slide / (OME-)TIFF / OME-Zarr image")
    parser.add_argument("real", help="the real H&E it should match: same kind as GENERATED (tiles paired by file name)")
    parser.add_argument("--prompt", default=None, help="text prompt the images were generated with (for PLIP-T)")
    parser.add_argument("--clip-model", default=P.PLIP_MODEL_ID,
                        help=f"CLIP model for the PLIP metrics: hub id or local folder (default {P.PLIP_MODEL_ID}); "
                        "'none' for pixel metrics only")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                        help=f"tile side in px for images (default {DEFAULT_TILE}); folders are scored per file")
    parser.add_argument("--no-mask", action="store_true",
                        help="compare every pixel (default: only the real image's tissue, not background glass)")
    parser.add_argument("--resample", action="store_true",
                        help="if the pixel sizes differ, resample the generated image to the real one's (else refuse)")
    parser.add_argument("--max-tiles", type=int, default=MAX_EMBED_TILES,
                        help=f"at most this many tiles of an image are embedded for PLIP (default {MAX_EMBED_TILES})")
    parser.add_argument("--allow-small-fid", action="store_true",
                        help="compute PLIP-FID even with fewer samples than embedding dimensions (unreliable)")
    parser.add_argument("--name", default=None, help="row name in the table (default: the generated path's name)")
    parser.add_argument("--csv", type=Path, default=None, metavar="PATH", help="also write the row as CSV")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the row as JSON")
    parser.add_argument("--device", default=None, help="where the CLIP model runs: cuda, mps or cpu (default: auto)")


def _row_name(path: str | Path) -> str:
    from ._reader import layer_name

    return layer_name(Path(path).expanduser().absolute())


def _progress_printer() -> Callable[[EvalProgress], None]:
    shown: dict[str, int] = {}

    def show(event: EvalProgress) -> None:
        step = max(1, event.total // 10)
        if event.done == event.total or event.done - shown.get(event.stage, 0) >= step:
            shown[event.stage] = event.done
            what = "tiles scored" if event.stage == "tiles" else "tiles embedded"
            print(f"  {event.done}/{event.total} {what}", file=sys.stderr, flush=True)

    return show


def main(args: argparse.Namespace) -> int:
    """Run ``napari-crafts evaluate``: print the paper's table row, write CSV/JSON; errors: one line, exit 2."""
    name = args.name or _row_name(args.generated)
    try:
        scorer = load_scorer(args.clip_model, device=args.device)
        result = evaluate_paths(
            args.generated, args.real, tile=args.tile, mask=None if args.no_mask else "tissue", scorer=scorer,
            prompt=args.prompt, max_tiles=args.max_tiles, allow_rank_deficient=args.allow_small_fid,
            resample=args.resample, on_progress=_progress_printer(),
        )
        rows = {name: result}
        M.write_results(rows, csv_path=args.csv, json_path=args.json)
    except (ValueError, OSError) as err:
        print(f"napari-crafts evaluate: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(M.format_table(rows))
    for note in result.notes:
        print(f"note: {note}")
    for path in (args.csv, args.json):
        if path is not None:
            print(f"wrote {path}")
    return 0
