"""Slide realism: tissue extent and glass on a whole slide, measured against the real H&E (docs/tissue.md).

    .venv/bin/python benchmarks/measure_tissue.py --out /tmp/tissue --steps 20
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/measure_tissue.py --out /tmp/tissue-before --before

The slide is CMU-1-Small-Region.svs (CC0, tests/data; 0.499 µm/px taken as the demo model's 0.5). Inputs:

- nuclei: the slide segmented whole by ``training.nuclei.segment_slide`` (the auto nuclei of ``pairs``, with the
  demo model's settings: min solidity 0.7, min area 4 µm²);
- fluorescence: the slide's simulated IF (``training.stain.simulated_if_source``: haematoxylin OD → nuclear,
  eosin OD → cytoplasm), standing in for a fluorescence slide whose real H&E is known.

Each case is generated whole through ``generate_region`` with the demo model (``--steps``, tile 512, overlap 64)
and compared with the real slide by one rule on both (the issue's): tissue = HSV saturation > 0.08 on the image
averaged 16× down. Figures: tissue IoU, the fraction of real glass drawn as tissue, blank 256-px blocks inside
real tissue (≥ 50 % tissue there, < 5 % in the synthetic image), the tile-to-tile colour std (mean RGB per
512-px block, std over blocks; on real tissue and on real glass), the seam score (``tiling.seam_score``) of the
synthetic and of the real slide on the same grid. Also the tissue masks alone (auto from labels, auto from
fluorescence) against the real tissue. ``--before`` runs the cases the code before tissue extent knew (labels and
fluorescence, every tile with nuclei generated, no mask) for the before/after table.

Writes OUT/tissue.json and low-zoom PNGs (synthetic | real, 8× down).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO / "tests" / "data" / "CMU-1-Small-Region.svs"
SLIDE_MPP = 0.5  # the slide's 0.499 µm/px, taken as the demo model's 0.5 (model and slide pixels coincide)
NUCLEI = {"min_solidity": 0.7, "min_area_um2": 4.0}
LOW = 16  # the tissue rule's downsampling
SATURATION = 0.08


def read_slide(path: Path) -> np.ndarray:
    from tiffslide import TiffSlide

    slide = TiffSlide(str(path))
    return np.asarray(slide.read_region((0, 0), 0, slide.dimensions, as_array=True))[..., :3]


def down(rgb: np.ndarray, factor: int) -> np.ndarray:
    h, w = (rgb.shape[0] // factor) * factor, (rgb.shape[1] // factor) * factor
    return rgb[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).mean((1, 3))


def tissue_rule(rgb: np.ndarray) -> np.ndarray:
    """The issue's rule, the same on real and synthetic: saturation > 0.08 at 16× down."""
    from skimage.color import rgb2hsv

    return rgb2hsv(down(rgb, LOW).astype(np.float64) / 255.0)[..., 1] > SATURATION


def mask_scores(found: np.ndarray, real: np.ndarray) -> dict[str, float]:
    inter, union = (found & real).sum(), (found | real).sum()
    return {"iou": round(float(inter / max(union, 1)), 4),
            "glass_as_tissue": round(float((found & ~real).sum() / max((~real).sum(), 1)), 4),
            "tissue_missed": round(float((~found & real).sum() / max(real.sum(), 1)), 4)}


def blank_blocks(synthetic: np.ndarray, real: np.ndarray, block: int = 256) -> dict[str, int]:
    """256-px blocks that are ≥ 50 % tissue in the real slide and < 5 % in the synthetic one (white holes)."""
    r, s = tissue_rule(real), tissue_rule(synthetic)
    b = block // LOW
    n = blank = 0
    for y in range(0, r.shape[0] - b + 1, b):
        for x in range(0, r.shape[1] - b + 1, b):
            if r[y : y + b, x : x + b].mean() >= 0.5:
                n += 1
                blank += int(s[y : y + b, x : x + b].mean() < 0.05)
    return {"tissue_blocks": n, "blank_blocks": blank}


def block_colour_std(synthetic: np.ndarray, real: np.ndarray, block: int = 512) -> dict[str, Any]:
    """Std over blocks of the per-block mean RGB of the synthetic image, on real tissue and on real glass."""
    r = np.repeat(np.repeat(tissue_rule(real), LOW, 0), LOW, 1)
    out: dict[str, Any] = {}
    for name, where in (("tissue", r), ("glass", ~r)):
        means = []
        for y in range(0, r.shape[0] - block + 1, block):
            for x in range(0, r.shape[1] - block + 1, block):
                m = where[y : y + block, x : x + block]
                if m.mean() >= 0.5:
                    means.append(synthetic[y : y + block, x : x + block][m].mean(0))
        out[name] = {"blocks": len(means),
                     "std_rgb": np.std(means, axis=0).round(2).tolist() if means else None,
                     "max_std": round(float(np.std(means, axis=0).max()), 2) if means else None}
    return out


def generate(engine: Any, source: Any, settings: Any) -> tuple[Any, Any, float]:
    from napari_crafts.generation.region import Region, generate_region, plan_region, run

    region = Region(0, 0, *source.shape)
    t0 = time.perf_counter()
    result = run(generate_region(engine, source, region, settings))
    return result, plan_region(source, region, engine, settings), time.perf_counter() - t0


def save_side_by_side(path: Path, synthetic: np.ndarray, real: np.ndarray, factor: int = 8) -> None:
    from PIL import Image

    a, b = down(synthetic, factor), down(real, factor)
    gap = np.full((a.shape[0], 8, 3), 255.0)
    Image.fromarray(np.round(np.concatenate([a, gap, b], axis=1)).astype(np.uint8)).save(path)


def main() -> None:
    from napari_crafts.generation.region import GenerationSettings
    from napari_crafts.generation.sources import LabelsSource
    from napari_crafts.generation.tiling import seam_score
    from napari_crafts.model.card import FLUORESCENCE_PROMPT
    from napari_crafts.model.engine import get_engine
    from napari_crafts.model.threads import set_default_threads
    from napari_crafts.training.nuclei import NucleiParams, segment_slide
    from napari_crafts.training.stain import simulated_if_source

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="demo")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--before", action="store_true", help="the code before tissue extent: no tissue argument")
    p.add_argument("--cases", nargs="+", default=["labels-auto", "labels-true", "fluorescence-auto"])
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    set_default_threads(args.threads)
    load0 = os.getloadavg()[0]

    rgb = read_slide(SLIDE)
    H, W = rgb.shape[:2]
    labels = np.zeros((H, W), np.int32)
    segment_slide(lambda y, x, h, w: rgb[y : y + h, x : x + w], (H, W), labels, mpp=0.499, params=NucleiParams(**NUCLEI))
    real_t = tissue_rule(rgb)
    report: dict[str, Any] = {"slide": SLIDE.name, "shape": [H, W], "nuclei": int(labels.max()), "steps": args.steps,
                              "rule": f"HSV saturation > {SATURATION} at {LOW}x down", "load_before": load0,
                              "real_tissue_fraction": round(float(real_t.mean()), 4), "masks": {}, "cases": {}}
    read = (lambda y, x, h, w: _padded(rgb, y, x, h, w))
    fluo = simulated_if_source(read, (H, W), mpp=SLIDE_MPP, name="CMU-1")
    if not args.before:  # the masks alone
        from napari_crafts.generation.tissue import auto_from_fluorescence, auto_from_labels

        for name, mask in (("auto from labels", auto_from_labels(LabelsSource(labels, mpp=SLIDE_MPP), (0, 0, H, W),
                                                                 SLIDE_MPP)),
                           ("auto from fluorescence", auto_from_fluorescence(fluo, (0, 0, H, W), SLIDE_MPP))):
            found = down(mask.alpha(0, 0, H, W)[..., None], LOW)[..., 0] >= 0.5
            report["masks"][name] = {**mask_scores(found, real_t), "how": mask.how}
            print(name, report["masks"][name], flush=True)
    engine = get_engine(args.model)
    settings = GenerationSettings(seed=0, steps=args.steps, tile_size=512, overlap=64)
    true_mask = real_t  # the real tissue at 16× down: a thumbnail mask, as a user would give
    cases = ["labels", "fluorescence"] if args.before else args.cases
    for case in cases:
        kw: dict[str, Any] = {} if args.before else {"tissue": {"labels-true": true_mask}.get(case, "auto")}
        if case.startswith("labels"):
            source: Any = LabelsSource(labels, name="CMU-1 auto nuclei", mpp=SLIDE_MPP, **kw)
            s = settings
        else:
            source = simulated_if_source(read, (H, W), mpp=SLIDE_MPP, name="CMU-1")
            if kw:
                source.tissue = kw["tissue"]
            s = GenerationSettings(**{**settings.__dict__, "prompt": FLUORESCENCE_PROMPT})
        result, plan, seconds = generate(engine, source, s)
        synthetic = result.rgb
        border, interior = seam_score(synthetic, plan.grid)
        rb, ri = seam_score(rgb, plan.grid)
        row = {**mask_scores(tissue_rule(synthetic), real_t), **blank_blocks(synthetic, rgb),
               "colour": block_colour_std(synthetic, rgb), "seam": round(border / interior, 3),
               "seam_real": round(rb / ri, 3), "tiles_generated": result.tiles_generated,
               "tiles_glass": result.tiles_skipped, "seconds": round(seconds, 1)}
        report["cases"][case] = row
        print(case, json.dumps(row), flush=True)
        save_side_by_side(args.out / f"{case}.png", synthetic, rgb)
    report["load_after"] = os.getloadavg()[0]
    (args.out / "tissue.json").write_text(json.dumps(report, indent=1))


def _padded(rgb: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w, 3), np.uint8)
    win = rgb[max(y, 0) : y + h, max(x, 0) : x + w]
    out[max(-y, 0) : max(-y, 0) + win.shape[0], max(-x, 0) : max(-x, 0) + win.shape[1]] = win
    return out


if __name__ == "__main__":
    main()
