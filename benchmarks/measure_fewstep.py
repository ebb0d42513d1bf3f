"""The few-step student (``--scheduler lcm``) against exact mode, on the same tiles (docs/demo_model.md, issue 23).

    .venv/bin/python benchmarks/measure_fewstep.py --model demo --pairs PAIRS --out /tmp/fewstep

1. Speed: one 512-px model tile of CMU-1 (the window of the slide with most tissue; nuclei from
   ``training.nuclei.segment_slide`` as in ``measure_demo_model.py``), through ``generate_region``: exact (the
   model's scheduler, 50 steps, CFG 7.5) and lcm at 2, 4 and 8 steps; each timed twice (the faster kept), at one
   and at two torch threads. SSIM/PSNR of each lcm tile against the exact tile, and against the real H&E.
2. The DSB 2018 sample labels (512² px at 0.25 µm/px, the demo's 128-px tiles, overlap 32): H-OD ratio (mean
   haematoxylin OD inside the nuclei over outside), red > green and mean RGB on tissue, exact against lcm.
3. Held-out: ``--tiles`` tiles of the pairs' test band (never trained on), each from its own labels control
   (``training.validation.generate_tiles``, noise by seed and tile): SSIM / PSNR / NCC against the real H&E for
   exact and for lcm, and SSIM of lcm against exact.

Writes OUT/fewstep.json and PNGs (synthetic beside exact and real). It records the load average: on a shared
machine the times are upper bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_demo_model import SLIDE, most_tissue, read_slide, save_png, segment  # noqa: E402

LCM_STEPS = (2, 4, 8)


def exact_and_lcm() -> dict[str, Any]:
    from napari_crafts.generation.region import GenerationSettings

    exact = GenerationSettings(seed=0, steps=50, tile_size=512, overlap=0)
    return {
        "exact (50 steps, CFG 7.5)": exact,
        **{f"lcm {n} steps": dataclasses.replace(exact, scheduler="lcm", steps=n) for n in LCM_STEPS},
    }


def timed(engine: Any, source: Any, region: Any, settings: Any, repeats: int = 2) -> tuple[np.ndarray, float]:
    from napari_crafts.generation.region import generate_region, run

    best, rgb = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        rgb = run(generate_region(engine, source, region, settings)).rgb
        best = min(best, time.perf_counter() - t0)
    return rgb, best  # type: ignore[return-value]


def speed(engine: Any, out: Path, threads: tuple[int, ...]) -> dict[str, Any]:
    from napari_crafts.evaluation.metrics import psnr, ssim
    from napari_crafts.generation.region import Region
    from napari_crafts.generation.sources import LabelsSource
    from napari_crafts.model.threads import set_default_threads

    rgb = read_slide(SLIDE)
    labels, _ = segment(rgb, {"min_solidity": 0.7, "min_area_um2": 4.0})
    y0, x0 = most_tissue(rgb, 512)
    source = LabelsSource(labels, name="CMU-1 auto nuclei", mpp=0.5)
    region, real = Region(y0, x0, 512, 512), rgb[y0 : y0 + 512, x0 : x0 + 512]
    rows: dict[str, Any] = {"window_yx": [y0, x0]}
    images = {}
    for n in threads:
        set_default_threads(n)
        for name, settings in exact_and_lcm().items():
            image, seconds = timed(engine, source, region, settings)
            images[name] = image
            rows.setdefault(name, {})[f"s_per_tile_{n}_threads"] = round(seconds, 2)
    exact = images["exact (50 steps, CFG 7.5)"]
    for name, image in images.items():
        rows[name].update(
            SSIM_vs_exact=round(ssim(image, exact), 4),
            PSNR_vs_exact=round(psnr(image, exact), 2),
            SSIM_vs_real=round(ssim(image, real), 4),
        )
    save_png(out / "tile512_exact_lcm2_lcm4_lcm8_real.png", np.concatenate([*images.values(), real], axis=1))
    return rows


def dsb(engine: Any, out: Path) -> dict[str, Any]:
    from napari_crafts._sample_data import load_nuclei
    from napari_crafts.evaluation.metrics import he_checks, ssim
    from napari_crafts.generation.region import Region, generate_region, run
    from napari_crafts.generation.sources import LabelsSource

    _, labels = load_nuclei()
    rows, images = {}, {}
    for name, settings in exact_and_lcm().items():
        settings = dataclasses.replace(settings, tile_size=128, overlap=32)
        rgb = run(
            generate_region(engine, LabelsSource(labels, name="DSB", mpp=0.25), Region(0, 0, *labels.shape), settings)
        ).rgb
        images[name] = rgb
        rows[name] = {k: round(v, 3) for k, v in he_checks(rgb, labels > 0).items()}
    exact = images["exact (50 steps, CFG 7.5)"]
    for name, rgb in images.items():
        rows[name]["SSIM_vs_exact"] = round(ssim(rgb, exact), 4)
    save_png(out / "dsb_exact_lcm2_lcm4_lcm8.png", np.concatenate(list(images.values()), axis=1))
    return rows


def heldout(engine: Any, pairs: Path, tiles: int, out: Path) -> dict[str, Any]:
    from napari_crafts.evaluation.metrics import pixel_metrics, ssim
    from napari_crafts.training.data import load_arrays, open_pairs
    from napari_crafts.training.validation import generate_tiles, spread_indices

    test = load_arrays(open_pairs(pairs, "test"), ["labels"])
    idx = spread_indices(len(test), tiles)
    controls, real = test.controls["labels"][idx], test.he[idx]
    prompt = engine.card.prompt
    made = {
        "exact (50 steps, CFG 7.5)": generate_tiles(engine, controls, mode="labels", prompt=prompt, steps=50, seed=0)
    }
    for n in LCM_STEPS:
        made[f"lcm {n} steps"] = generate_tiles(
            engine, controls, mode="labels", prompt=prompt, steps=n, seed=0, scheduler="lcm"
        )
    rows: dict[str, Any] = {"tiles": len(idx)}
    exact = made["exact (50 steps, CFG 7.5)"]
    for name, gen in made.items():
        per = [pixel_metrics(g, r) for g, r in zip(gen, real, strict=True)]
        rows[name] = {k: round(float(np.mean([m[k] for m in per])), 4) for k in ("SSIM", "PSNR", "NCC")}
        rows[name]["SSIM_vs_exact"] = round(float(np.mean([ssim(g, e) for g, e in zip(gen, exact, strict=True)])), 4)
    show = slice(0, 8)
    strip = [np.concatenate(list(controls[show]), 1)] + [np.concatenate(list(g[show]), 1) for g in made.values()]
    save_png(
        out / "heldout_control_exact_lcm2_lcm4_lcm8_real.png",
        np.concatenate([*strip, np.concatenate(list(real[show]), 1)], 0),
    )
    return rows


def main() -> None:
    from napari_crafts.model.engine import get_engine
    from napari_crafts.model.threads import set_default_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--pairs", type=Path, required=True, help="a pairs set of CMU-1 (napari-crafts pairs)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiles", type=int, default=64, help="held-out tiles")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads for the speed rows")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engine = get_engine(args.model, device="cpu")
    report: dict[str, Any] = {
        "model": args.model,
        "student": engine.card.student.get("sha256"),
        "load_average_start": os.getloadavg(),
        "cpu_count": os.cpu_count(),
    }
    report["speed"] = speed(engine, args.out, tuple(args.threads))
    print("speed", json.dumps(report["speed"]), flush=True)
    set_default_threads(1)
    report["dsb"] = dsb(engine, args.out)
    print("dsb", json.dumps(report["dsb"]), flush=True)
    report["heldout"] = heldout(engine, args.pairs, args.tiles, args.out)
    print("heldout", json.dumps(report["heldout"]), flush=True)
    report["load_average_end"] = os.getloadavg()
    (args.out / "fewstep.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
