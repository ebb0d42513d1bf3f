"""Built-in classical nuclei segmentation of H&E (``--nuclei auto``): no model, no download.

1. Colour deconvolution (``skimage.color.rgb2hed``): haematoxylin optical density, lightly smoothed.
2. One threshold for the whole slide: Otsu on the haematoxylin OD of tissue pixels only (glass would drag it
   down), computed once on a sample of the slide (``sources.limits_sample``), so no tile has its own.
3. Mask = tissue and OD above the threshold; opened (removes specks), holes filled, small objects removed.
4. Touching nuclei split by a watershed on the (smoothed) distance transform, seeded at its local maxima at
   least ``split_distance_um`` apart.
5. Objects kept when their area lies in [``min_area_um2``, ``max_area_um2``] and their solidity is at least
   ``min_solidity`` (rejects ragged dark debris: keratin flakes, folds), and they are not blue-green
   marking dye (mean green above mean red by more than ``ink_margin``; H&E nuclei are purple).

Sizes are in µm and converted with the slide's pixel size. Large slides are segmented block by block with a
margin; a nucleus belongs to the block that holds its centre, so blocks leave no seams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._generators import run
from ..evaluation.metrics import TISSUE_OD_THRESHOLD, tissue_mask
from ..generation.sources import limits_sample
from .stain import ReadRGB, haematoxylin_od


class NucleiError(ValueError):
    """The H&E holds nothing to segment (no tissue, no nuclei); the message says what to check."""


@dataclass(frozen=True)
class NucleiParams:
    """Parameters of the classical segmentation (recorded in the dataset card)."""

    smooth_um: float = 0.5  # Gaussian sigma on the haematoxylin OD
    threshold: float | None = None  # haematoxylin OD; None = Otsu over the slide's tissue
    threshold_scale: float = 1.0  # multiplies the Otsu threshold (> 1 stricter)
    opening_um: float = 0.5  # radius of the opening that removes specks
    split_distance_um: float = 2.5  # minimum distance between watershed seeds (about a small nucleus radius)
    # 4 µm² and 0.7: on CMU-1, 8 µm² and 0.85 left ~40 % of the strongly haematoxylin-stained pixels unlabelled
    # (small and irregular nuclei), and a ControlNet trained on such labels draws nuclei where labels have none
    min_area_um2: float = 4.0
    max_area_um2: float = 150.0
    min_solidity: float = 0.7
    tissue_od: float = TISSUE_OD_THRESHOLD  # metrics.tissue_mask's rule
    ink_margin: float | None = 15.0  # objects greener than red by more than this (mean) are marking dye

    def __post_init__(self) -> None:
        checks = {"--nuclei-min-area": (self.min_area_um2, 0 < self.min_area_um2 < self.max_area_um2),
                  "--nuclei-min-solidity": (self.min_solidity, 0 <= self.min_solidity <= 1),
                  "--nuclei-threshold": (self.threshold, self.threshold is None or self.threshold > 0)}
        for flag, (value, ok) in checks.items():
            if not ok:
                raise NucleiError(f"{flag} {value} is out of range (area: (0, {self.max_area_um2}) µm²; solidity: "
                                  "[0, 1]; threshold: a positive haematoxylin OD).")

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ALGORITHM = ("rgb2hed haematoxylin OD, Gaussian-smoothed; Otsu threshold on tissue pixels (metrics.tissue_mask) "
             "of the whole slide; opening, holes filled, small objects removed; watershed on the distance "
             "transform from its local maxima; objects filtered by area, solidity and colour (blue-green "
             "marking dye is not a nucleus)")


def _px(um: float, mpp: float) -> float:
    return um / mpp


def _smoothed_h(rgb: np.ndarray, params: NucleiParams, mpp: float) -> np.ndarray:
    from skimage.filters import gaussian

    h = haematoxylin_od(rgb)
    sigma = _px(params.smooth_um, mpp)
    return gaussian(h, sigma, preserve_range=True).astype(np.float32) if sigma > 0.25 else h


def slide_threshold(read_rgb: ReadRGB, shape: tuple[int, int], *, mpp: float,
                    params: NucleiParams = NucleiParams()) -> float:
    """The haematoxylin-OD threshold for a whole slide: Otsu over the tissue pixels of a sample of it."""
    if params.threshold is not None:
        return float(params.threshold)
    from skimage.filters import threshold_otsu

    class _RGB:  # a (Y, X) view whose windows are RGB, so limits_sample can take its grid of windows
        def __init__(self) -> None:
            self.shape = shape

        def __getitem__(self, key: Any) -> np.ndarray:
            ys, xs = key
            y0, y1, _ = ys.indices(shape[0])
            x0, x1, _ = xs.indices(shape[1])
            return read_rgb(y0, x0, y1 - y0, x1 - x0)

    sample, _ = limits_sample(_RGB())
    windows = sample if sample.ndim == 4 else sample[None]
    values = [_smoothed_h(w, params, mpp)[tissue_mask(w, od_threshold=params.tissue_od)] for w in windows]
    tissue = np.concatenate(values) if values else np.zeros(0, np.float32)
    if tissue.size < 100:
        raise NucleiError("The H&E shows no tissue (every pixel looks like glass): nothing to segment; "
                          "check that this is a brightfield H&E image.")
    if float(tissue.max()) <= float(tissue.min()):
        return float(tissue.max())  # one haematoxylin level: nothing lies above it, so no nuclei
    return float(threshold_otsu(tissue)) * params.threshold_scale


def segment_nuclei(rgb: np.ndarray, *, mpp: float, threshold: float,
                   params: NucleiParams = NucleiParams()) -> np.ndarray:
    """Instance labels (H, W) int32 of the nuclei in one RGB window, at a given haematoxylin threshold."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian
    from skimage.measure import regionprops
    from skimage.morphology import disk
    from skimage.segmentation import watershed

    h = _smoothed_h(rgb, params, mpp)
    mask = (h > threshold) & tissue_mask(rgb, od_threshold=params.tissue_od)
    radius = round(_px(params.opening_um, mpp))
    if radius >= 1:
        mask = ndi.binary_opening(mask, disk(radius))
    mask = ndi.binary_fill_holes(mask)
    components, n = ndi.label(mask)
    small = np.bincount(components.ravel(), minlength=n + 1) < _px(_px(params.min_area_um2, mpp), mpp)
    small[0] = True
    mask = ~small[components]
    labels = np.zeros(mask.shape, np.int32)
    if not mask.any():
        return labels
    dist = gaussian(ndi.distance_transform_edt(mask), 1.0, preserve_range=True)
    components[~mask] = 0
    seeds = peak_local_max(dist, min_distance=max(1, round(_px(params.split_distance_um, mpp))),
                           labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    split = watershed(-dist, markers, mask=mask)
    area_px = mpp * mpp
    green_minus_red = rgb[..., 1].astype(np.float32) - rgb[..., 0].astype(np.float32)
    ink = np.inf if params.ink_margin is None else params.ink_margin
    keep = [r.label for r in regionprops(split, intensity_image=green_minus_red)
            if params.min_area_um2 <= r.area * area_px <= params.max_area_um2 and r.solidity >= params.min_solidity
            and r.intensity_mean <= ink]
    lut = np.zeros(int(split.max()) + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[split]


@dataclass
class NucleiStats:
    """What the segmentation found: count, areas, haematoxylin OD inside vs. outside (on tissue)."""

    count: int = 0
    area_px: int = 0
    h_inside: float = 0.0
    n_inside: int = 0
    h_outside: float = 0.0
    n_outside: int = 0

    def record(self, mpp: float) -> dict[str, Any]:
        inside = self.h_inside / self.n_inside if self.n_inside else 0.0
        outside = self.h_outside / self.n_outside if self.n_outside else 0.0
        return {"count": self.count, "mean_area_um2": round(self.area_px * mpp * mpp / max(self.count, 1), 2),
                "h_od_inside": round(inside, 4), "h_od_outside_on_tissue": round(outside, 4),
                "h_od_ratio": round(inside / outside, 2) if outside > 0 else None}


def iter_segment_slide(read_rgb: ReadRGB, shape: tuple[int, int], out: Any, *, mpp: float,
                       params: NucleiParams = NucleiParams(), block: int = 2048, margin: int | None = None,
                       ) -> Generator[tuple[int, int], None, tuple[float, NucleiStats]]:
    """Segment a whole slide into ``out`` (a zeroed (Y, X) int32 array: numpy or zarr), block by block.

    Yields (blocks done, blocks) after each block; returns the threshold used and the statistics. Each block
    is segmented with ``margin`` px of context (default: 3× the largest nucleus diameter); a nucleus is written
    by the block holding its centre, whole, and never over one already written.
    """
    from skimage.measure import regionprops

    H, W = shape
    threshold = slide_threshold(read_rgb, shape, mpp=mpp, params=params)
    if margin is None:
        margin = int(np.ceil(3 * 2 * np.sqrt(params.max_area_um2 / np.pi) / mpp))
    starts = [(y, x) for y in range(0, H, block) for x in range(0, W, block)]
    stats, next_label = NucleiStats(), 1
    for i, (by, bx) in enumerate(starts):
        bh, bw = min(block, H - by), min(block, W - bx)
        y0, x0 = max(0, by - margin), max(0, bx - margin)
        y1, x1 = min(H, by + bh + margin), min(W, bx + bw + margin)
        rgb = read_rgb(y0, x0, y1 - y0, x1 - x0)
        tissue = tissue_mask(rgb, od_threshold=params.tissue_od)
        if tissue.any():
            labels = segment_nuclei(rgb, mpp=mpp, threshold=threshold, params=params)
            window = np.asarray(out[y0:y1, x0:x1])
            for r in regionprops(labels):
                cy, cx = r.centroid
                if not (by <= y0 + cy < by + bh and bx <= x0 + cx < bx + bw):
                    continue
                free = r.image & (window[r.slice] == 0)
                if free.any():
                    window[r.slice][free] = next_label
                    next_label += 1
            out[y0:y1, x0:x1] = window
            core = (slice(by - y0, by - y0 + bh), slice(bx - x0, bx - x0 + bw))
            h = haematoxylin_od(rgb)[core]
            nuc, tis = window[core] > 0, tissue[core]
            stats.area_px += int(nuc.sum())
            stats.h_inside += float(h[nuc].sum())
            stats.n_inside += int(nuc.sum())
            stats.h_outside += float(h[tis & ~nuc].sum())
            stats.n_outside += int((tis & ~nuc).sum())
        yield i + 1, len(starts)
    stats.count = next_label - 1
    return threshold, stats


def segment_slide(read_rgb: ReadRGB, shape: tuple[int, int], out: Any, *, mpp: float,
                  params: NucleiParams = NucleiParams(), block: int = 2048,
                  margin: int | None = None) -> tuple[float, NucleiStats]:
    """:func:`iter_segment_slide` run to the end."""
    return run(iter_segment_slide(read_rgb, shape, out, mpp=mpp, params=params, block=block, margin=margin))
