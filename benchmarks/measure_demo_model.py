"""Seams, tile-to-tile colour and the fast modes, measured with a trained model on real nuclei (docs/demo_model.md).

    .venv/bin/python benchmarks/measure_demo_model.py --model demo --out /tmp/measure \
        --nuclei-params '{"min_solidity": 0.7, "min_area_um2": 4.0}'

1. Nuclei: CMU-1-Small-Region.svs (CC0) segmented whole with ``training.nuclei.segment_slide`` (the auto nuclei
   of ``napari-crafts pairs``; ``--nuclei-params`` as the pairs set used). The slide's 0.499 µm/px is taken as
   0.5 (0.2 % apart) so model and slide pixels coincide and the tile grid falls on whole pixels.
2. Region: the ``--side``² window (default 2048) with the most tissue, through ``generation.region.generate_region``
   (the current blending; tile 512, overlap 64, ``--steps``). Seam score as ``napari-crafts demo`` reports it:
   ``tiling.seam_score(rgb, plan.grid)`` (border/interior: mean step at tile edges over inside tile cores),
   also on the real H&E of the same window as a reference. OUT/region_lowzoom.png: generated | real, 4× down.
3. Tile-to-tile colour: the window cut into blocks of ``--blocks`` px; blocks where both the generated and the
   real image are ≥ 50 % tissue (``metrics.tissue_mask``); per block the mean over its tissue pixels in RGB,
   CIELAB and optical density (OD = −log10((I + 1) / 256)); the std of those means over blocks, per channel.
4. Fast modes against exact mode on a ``--fast-window`` (default 512×512: one 512-px tile) at the centre of
   the same window: exact = the model's own scheduler at 50 steps, CFG 7.5 for every step, full UNet every
   step; each fast mode's wall time, and its SSIM and PSNR against the exact output.

Writes OUT/measure.json and PNGs. Run it alone on a quiet machine if you can; it records the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO / "tests" / "data" / "CMU-1-Small-Region.svs"
#: The slide's 0.499 µm/px, taken as the model's 0.5 (see 1. above).
SLIDE_MPP = 0.5


def read_slide(path: Path) -> np.ndarray:
    from tiffslide import TiffSlide

    slide = TiffSlide(str(path))
    return np.asarray(slide.read_region((0, 0), 0, slide.dimensions, as_array=True))[..., :3]


def segment(rgb: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    from napari_crafts.training.nuclei import NucleiParams, segment_slide

    out = np.zeros(rgb.shape[:2], np.int32)

    def read(y: int, x: int, h: int, w: int) -> np.ndarray:
        return rgb[y: y + h, x: x + w]

    threshold, stats = segment_slide(read, rgb.shape[:2], out, mpp=0.499, params=NucleiParams(**params))
    return out, {"params": params, "threshold": threshold, **stats.record(0.499)}


def generate(engine: Any, labels: np.ndarray, box: tuple[int, int, int, int], settings: Any) -> tuple[Any, Any, float]:
    from napari_crafts.generation.region import Region, generate_region, plan_region, run
    from napari_crafts.generation.sources import LabelsSource

    source = LabelsSource(labels, name="CMU-1 auto nuclei", mpp=SLIDE_MPP)
    region = Region(*box)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run(generate_region(engine, source, region, settings))
    result.notes.append(f"cpu_seconds {time.process_time() - c0:.1f}")
    return result, plan_region(source, region, engine, settings), time.perf_counter() - t0


def colour_variation(generated: np.ndarray, real: np.ndarray, block: int) -> dict[str, Any]:
    """Std over tissue blocks of the per-block mean colour (RGB, LAB, OD), for the generated and the real image."""
    from skimage.color import rgb2lab

    from napari_crafts.evaluation.metrics import tissue_mask

    spaces = {"RGB": lambda a: a.astype(np.float64), "LAB": lambda a: rgb2lab(a),
              "OD": lambda a: -np.log10((a.astype(np.float64) + 1) / 256)}
    means: dict[str, dict[str, list[np.ndarray]]] = {name: {k: [] for k in spaces} for name in ("generated", "real")}
    H, W = generated.shape[:2]
    blocks = 0
    for y in range(0, H - block + 1, block):
        for x in range(0, W - block + 1, block):
            pair = {"generated": generated[y: y + block, x: x + block], "real": real[y: y + block, x: x + block]}
            masks = {k: tissue_mask(v) for k, v in pair.items()}
            if min(m.mean() for m in masks.values()) < 0.5:
                continue
            blocks += 1
            for name, img in pair.items():
                for space, convert in spaces.items():
                    means[name][space].append(convert(img)[masks[name]].mean(0))
    out: dict[str, Any] = {"block_px": block, "tissue_blocks": blocks}
    for name, per_space in means.items():
        out[name] = {space: {"std": np.std(v, axis=0).round(4).tolist(), "mean": np.mean(v, axis=0).round(3).tolist()}
                     for space, v in per_space.items() if v}
    return out


def fast_modes(engine: Any, labels: np.ndarray, box: tuple[int, int, int, int], out: Path,
               exact_steps: int = 50) -> dict[str, Any]:
    from napari_crafts.evaluation.metrics import psnr, ssim
    from napari_crafts.generation.estimate import fast_settings
    from napari_crafts.generation.region import GenerationSettings

    exact = GenerationSettings(seed=0, steps=exact_steps, tile_size=512, overlap=0)
    few = max(1, round(exact_steps * 0.4))
    modes = {
        f"exact (model scheduler, {exact_steps} steps)": exact,
        f"fewer steps: model scheduler, {few} steps": dataclasses.replace(exact, steps=few),
        f"fewer steps: UniPC, {few} steps": dataclasses.replace(exact, scheduler="unipc", steps=few),
        f"feature reuse: full UNet every 3rd step ({exact_steps} steps)": dataclasses.replace(exact, cache_interval=3),
        f"CFG cut-off: guidance for the first 50 % of steps ({exact_steps} steps)":
            dataclasses.replace(exact, cfg_cutoff=0.5),
        "widget fast settings (UniPC 10 + reuse every 2 + CFG 50 %, 256-px tiles)": fast_settings(exact),
    }
    rows: dict[str, Any] = {}
    reference = None
    for name, settings in modes.items():
        result, _, seconds = generate(engine, labels, box, settings)
        row = {"seconds": round(seconds, 1), "cpu_seconds": float(result.notes[-1].split()[-1]),
               "tiles": result.tiles_generated, "steps": settings.steps,
               "scheduler": settings.scheduler, "cfg_cutoff": settings.cfg_cutoff,
               "cache_interval": settings.cache_interval, "tile_size": settings.tile_size}
        if reference is None:
            reference = result.rgb
        else:
            row.update(SSIM=round(ssim(result.rgb, reference), 4), PSNR=round(psnr(result.rgb, reference), 2))
        rows[name] = row
        save_png(out / f"fast_{len(rows)}.png", result.rgb)
        print(name, row, flush=True)
    return rows


def most_tissue(rgb: np.ndarray, side: int, step: int = 64) -> tuple[int, int]:
    """Top-left corner of the side×side window (on a ``step``-px lattice) with the most tissue."""
    from napari_crafts.evaluation.metrics import tissue_mask

    tissue = tissue_mask(rgb[::8, ::8]).astype(np.float64)
    H, W = rgb.shape[:2]
    corners = [(y, x) for y in range(0, H - side + 1, step) for x in range(0, W - side + 1, step)]
    return max(corners, key=lambda c: tissue[c[0] // 8: (c[0] + side) // 8, c[1] // 8: (c[1] + side) // 8].mean())


def save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).save(path)


def low_zoom(rgb: np.ndarray, factor: int) -> np.ndarray:
    h, w = (rgb.shape[0] // factor) * factor, (rgb.shape[1] // factor) * factor
    small = rgb[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean((1, 3))
    return np.round(small).astype(np.uint8)


def main() -> None:
    from napari_crafts.generation.region import GenerationSettings
    from napari_crafts.generation.tiling import seam_score
    from napari_crafts.model.engine import get_engine
    from napari_crafts.model.threads import set_default_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--slide", type=Path, default=SLIDE)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--nuclei-params", default="{}", help="JSON: training.nuclei.NucleiParams fields")
    p.add_argument("--side", type=int, default=2048, help="side of the generated window (px)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--blocks", type=int, nargs="+", default=[512, 256], help="block sides for the colour variation")
    p.add_argument("--fast-window", type=int, nargs=2, default=[512, 512], help="height width of the fast-mode window")
    p.add_argument("--exact-steps", type=int, default=50, help="steps of exact mode (fewer-step modes: 40 %%)")
    p.add_argument("--skip-fast", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady times on a shared machine)")
    args = p.parse_args()
    set_default_threads(args.threads)  # generation pins this count in whichever thread runs the steps
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "torch_threads": args.threads,
                              "model": args.model, "slide": str(args.slide)}
    t0 = time.perf_counter()
    rgb = read_slide(args.slide)
    labels, report["nuclei"] = segment(rgb, json.loads(args.nuclei_params))
    report["nuclei"]["seconds"] = round(time.perf_counter() - t0, 1)
    print("nuclei", report["nuclei"], flush=True)

    engine = get_engine(args.model, device="cpu")
    report["model_path"], report["model_mpp"] = str(engine.path), engine.mpp
    side = min(args.side, *labels.shape)
    y0, x0 = most_tissue(rgb, side)
    box = (y0, x0, side, side)
    settings = GenerationSettings(seed=0, steps=args.steps, tile_size=args.tile_size, overlap=args.overlap)
    result, plan, seconds = generate(engine, labels, box, settings)
    real = rgb[y0: y0 + side, x0: x0 + side]
    generated = result.rgb
    border, interior = seam_score(generated, plan.grid)
    real_border, real_interior = seam_score(real, plan.grid)
    report["region"] = {
        "box_yxhw": box, "steps": args.steps, "tile_size": args.tile_size, "overlap": args.overlap,
        "scheduler": "model's own", "guidance": settings.guidance_scale, "tiles": result.tiles_generated,
        "tiles_skipped": result.tiles_skipped, "seconds": round(seconds, 1),
        "cpu_seconds": float(result.notes[-1].split()[-1]),
        "seam_score": {"border": round(border, 3), "interior": round(interior, 3),
                       "ratio": round(border / interior, 3)},
        "seam_score_real_he_same_grid": {"border": round(real_border, 3), "interior": round(real_interior, 3),
                                         "ratio": round(real_border / real_interior, 3)},
    }
    print("region", report["region"], flush=True)
    save_png(args.out / "region_generated.png", generated)
    save_png(args.out / "region_lowzoom.png", np.concatenate([low_zoom(generated, 4), low_zoom(real, 4)], 1))
    mask = np.repeat(((labels[y0: y0 + side, x0: x0 + side] > 0) * 255).astype(np.uint8)[..., None], 3, -1)
    save_png(args.out / "region_labels_lowzoom.png", low_zoom(mask, 4))
    report["colour_variation"] = [colour_variation(generated, real, b) for b in args.blocks]
    print("colour", report["colour_variation"], flush=True)
    if not args.skip_fast:
        fh, fw = args.fast_window
        fy, fx = y0 + (side - fh) // 2, x0 + (side - fw) // 2
        report["fast_modes"] = {"box_yxhw": (fy, fx, fh, fw),
                                "rows": fast_modes(engine, labels, (fy, fx, fh, fw), args.out, args.exact_steps)}
    report["load_average_end"] = os.getloadavg()
    report["seconds_total"] = round(time.perf_counter() - t0, 1)
    (args.out / "measure.json").write_text(json.dumps(report, indent=1))
    print("wrote", args.out / "measure.json")


if __name__ == "__main__":
    main()
