"""Score generated against real H&E: two aligned images tile by tile, two folders of tiles pair by pair.

Steps for two images: 1. check both are RGB, their pixel sizes (resample the generated image to the real
one's when asked) and their shapes; 2. pixel metrics tile by tile (one tile in memory at a time);
3. aggregate over tiles, weighted by compared pixels; 4. PLIP metrics on at most ``max_tiles`` tiles.
Folders of tiles are paired by file name and scored with :func:`evaluate_pairs`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..generation.region import run  # drives any of our generators (evaluation, generation) to its result
from . import metrics as M
from . import plip as P
from .inputs import EvaluationError, align_images, input_kind, open_image
from .metrics import EvaluationResult, MaskSpec, TileResult
from .plip_eval import MAX_EMBED_TILES, EvalProgress, iter_plip, pick_tiles

#: Default tile side in pixels (the paper's models work on 512 px tiles).
DEFAULT_TILE = 512
NO_TISSUE = ("The tissue mask is empty: no tile of the real image holds tissue (all looks like background glass). "
             "Pick a region with tissue, or turn the tissue mask off (--no-mask).")


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


def _mean_std(values: list[float], key: str, notes: list[str]) -> tuple[float, float]:
    v = np.array(values, dtype=np.float64)
    ok = ~np.isnan(v)
    if not ok.all():
        notes.append(f"{key} undefined for {int((~ok).sum())} of {len(v)} pairs (constant image); left out.")
    v = v[ok]
    if len(v) == 0:
        return math.nan, math.nan
    with np.errstate(invalid="ignore"):
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def evaluate_pairs(generated: Sequence[np.ndarray], real: Sequence[np.ndarray], *, prompt: str | None = None,
                   scorer: P.ClipScorer | None = None, mask: MaskSpec = "tissue",
                   allow_rank_deficient: bool = False) -> EvaluationResult:
    """Score paired generated/real RGB tiles: pixel metrics per pair (mean, sample std) and PLIP metrics.

    ``mask``: "tissue" (each real tile's :func:`metrics.tissue_mask`), None, or one boolean array for all pairs.
    PLIP metrics need a ``scorer`` (PLIP-T also a ``prompt``), else they are nan. PLIP-FID is nan with a
    warning and a note when the sets are too small (see :func:`~napari_crafts.evaluation.plip.plip_fid`). PSNR's mean is
    inf if any pair is identical.
    """
    if len(generated) != len(real):
        raise ValueError(f"Got {len(generated)} generated and {len(real)} real images: they must be paired.")
    if not generated:
        raise ValueError("No image pairs to evaluate.")
    per_pair: dict[str, list[float]] = {k: [] for k in M.PIXEL_METRICS}
    for i, (g, r) in enumerate(zip(generated, real, strict=True)):
        m = M.tissue_mask(r) if isinstance(mask, str) else mask
        try:
            values = M.pixel_metrics(g, r, mask=m)
        except ValueError as err:
            raise ValueError(f"Pair {i}: {err}") from err
        for k in M.PIXEL_METRICS:
            per_pair[k].append(values[k])
    notes: list[str] = []
    stats = {k: _mean_std(per_pair[k], k, notes) for k in M.PIXEL_METRICS}
    means_stds: dict[str, Any] = {k.lower(): stats[k][0] for k in M.PIXEL_METRICS}
    means_stds.update({f"{k.lower()}_std": stats[k][1] for k in M.PIXEL_METRICS})
    result = EvaluationResult(
        n=len(generated), **means_stds,
        prompt=prompt, mask=mask if isinstance(mask, str) or mask is None else "custom", notes=notes,
    )
    if scorer is not None:  # PLIP metrics are filled in one place: plip_eval.iter_plip
        run(iter_plip(result, scorer, generated, real, prompt=prompt, allow_rank_deficient=allow_rank_deficient))
        for note in notes:
            if note.startswith("PLIP-FID not computed"):
                warnings.warn(note, stacklevel=2)
    return result


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
    stds: dict[str, Any] = {f"{k.lower()}_std": _weighted_std(tiles, k, agg[k]) for k in ("SSIM", "MSE", "NCC")}
    result = EvaluationResult(
        n=len(tiles), ssim=agg["SSIM"], psnr=agg["PSNR"], mse=agg["MSE"], ncc=agg["NCC"], **stds,
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
        result = evaluate_pairs(gen, real, prompt=prompt or None, mask=mask)
    except ValueError as err:
        found = re.match(r"Pair (\d+): (.*)", str(err), re.S)
        if found is None:
            raise
        raise EvaluationError(f"Tile '{names[int(found[1])]}': {found[2]}") from None
    if scorer is not None:
        run(iter_plip(result, scorer, gen, real, prompt=prompt, allow_rank_deficient=allow_rank_deficient),
            on_progress)
    return result


def evaluate_paths(generated: str | Path, real: str | Path, *, tile: int = DEFAULT_TILE, mask: MaskSpec = "tissue",
                   scorer: P.ClipScorer | None = None, prompt: str | None = None,
                   max_tiles: int | None = MAX_EMBED_TILES, allow_rank_deficient: bool = False,
                   resample: bool = False,
                   on_progress: Callable[[EvalProgress], None] | None = None) -> EvaluationResult:
    """Two folders of tiles (:func:`evaluate_folders`) or two image files/folders (:func:`evaluate_images`)."""
    gp, rp = Path(generated).expanduser(), Path(real).expanduser()
    kinds = (input_kind(gp) == "tiles", input_kind(rp) == "tiles")
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
