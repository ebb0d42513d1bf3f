"""The demo model's H&E checks (docs/demo_model.md), measured against the random tiny model and real CMU-1.

    .venv/bin/python scripts/check_demo_model.py --model src/napari_crafts/data/demo_model \
        --pairs /path/to/pairs-cmu1 --out /tmp/demo-checks

1. The DSB 2018 sample labels (napari_crafts._sample_data, 512² px, 0.25 µm/px assumed) through
   generation.region.generate_region: haematoxylin OD inside the labels / outside, red > green on tissue,
   mean colour on tissue (against the same numbers on real CMU-1 test tiles).
2. The held-out band of the pairs set: every test tile generated from its labels and its (simulated)
   fluorescence control through the Engine; SSIM/PSNR/MSE/NCC against the real H&E, for this model and for
   the random tiny model.
3. Speed: one 512² tile at 50 steps with CFG (labels mode) through Engine.generate, and the weight size.

Writes OUT/checks.json and PNGs to look at (OUT/dsb_*.png, OUT/heldout_*.png).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def drive(gen: Any) -> Any:
    """Run a generator to its end and return its value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def dsb_check(engine: Any, steps: int, tile_size: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from napari_crafts._sample_data import load_nuclei
    from napari_crafts.evaluation.metrics import he_checks
    from napari_crafts.generation.region import GenerationSettings, Region, generate_region
    from napari_crafts.generation.sources import LabelsSource

    _, labels = load_nuclei()
    labels = labels[:512, :512]
    source = LabelsSource(labels, name="nuclei labels (DSB 2018)", mpp=0.25)
    settings = GenerationSettings(seed=0, steps=steps, tile_size=tile_size)
    t0 = time.perf_counter()
    result = drive(generate_region(engine, source, Region(0, 0, 512, 512), settings))
    seconds = time.perf_counter() - t0
    return result.rgb, labels, {"seconds": round(seconds, 1), "steps": steps, "tile_size": tile_size,
                                **he_checks(result.rgb, labels > 0)}


def real_reference(test: Any) -> dict[str, Any]:
    """The same numbers on the real H&E of the held-out tiles, with their own nuclei masks."""
    from napari_crafts.evaluation.metrics import he_checks

    he = np.concatenate(list(test.he), axis=1)
    mask = np.concatenate(list(test.controls["labels"][..., 0] > 127), axis=1)
    return he_checks(he, mask)


def heldout(engine: Any, test: Any, modes: list[str], steps: int, seed: int = 0) -> dict[str, Any]:
    from napari_crafts.evaluation.metrics import he_checks, pixel_metrics
    from napari_crafts.training.validation import generate_tiles

    out: dict[str, Any] = {}
    images = {}
    for mode in modes:
        t0 = time.perf_counter()
        gen = generate_tiles(engine, test.controls[mode], mode=mode, prompt=engine.card.prompt, steps=steps, seed=seed)
        rows = [pixel_metrics(g, r) for g, r in zip(gen, test.he, strict=True)]
        stats = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in rows[0]}
        big = np.concatenate(list(gen), axis=1)
        mask = np.concatenate(list(test.controls["labels"][..., 0] > 127), axis=1)
        out[mode] = {"tiles": len(gen), "steps": steps, "seconds": round(time.perf_counter() - t0, 1),
                     "mean_sd": stats, **{f"he_{k}": v for k, v in he_checks(big, mask).items()}}
        images[mode] = gen
    return {"metrics": out, "images": images}


def speed(engine: Any, steps: int = 50) -> float:
    """Seconds for one 512² tile, ``steps`` steps, CFG 7.5, labels mode (after one warm-up step)."""
    from napari_crafts._sample_data import load_nuclei
    from napari_crafts.generation.conditioning import labels_to_control

    _, labels = load_nuclei()
    control = labels_to_control(labels[:512, :512])[None]
    lat = 512 // engine.vae_scale_factor
    noise = np.random.default_rng(0).standard_normal((1, 4, lat, lat)).astype(np.float32)
    drive(engine.generate(noise, control, prompt=engine.card.prompt, steps=1))
    t0 = time.perf_counter()
    drive(engine.generate(noise, control, prompt=engine.card.prompt, steps=steps))
    return time.perf_counter() - t0


def save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).save(path)


def main() -> None:
    from napari_crafts.model.engine import Engine
    from napari_crafts.model.tiny import ensure_tiny_model
    from napari_crafts.training.data import load_arrays, open_pairs
    from napari_crafts.training.model_folder import folder_size_mb

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="src/napari_crafts/data/demo_model")
    p.add_argument("--pairs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--tiles", type=int, default=0, help="held-out tiles (0: all)")
    p.add_argument("--baseline-tiles", type=int, default=16, help="held-out tiles for the random tiny model")
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_arrays(open_pairs(args.pairs, "test"), ["labels", "fluorescence"])
    if args.tiles:
        from napari_crafts.training.validation import pick_tiles

        idx = pick_tiles(len(test), args.tiles)
        test.he, test.controls = test.he[idx], {k: v[idx] for k, v in test.controls.items()}
    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "torch_threads": None}
    import torch

    report["torch_threads"] = torch.get_num_threads()
    report["real_cmu1_test_tiles"] = real_reference(test)

    engine = Engine(args.model, device="cpu")
    report["model"] = {"path": args.model, "weights_mb": round(folder_size_mb(args.model), 2), "mpp": engine.mpp}
    report["speed_512_tile_50_steps_cfg_s"] = round(speed(engine, 50), 2)
    rgb, labels, report["dsb_demo_model"] = dsb_check(engine, args.steps, 512)
    mask_rgb = np.repeat(((labels > 0) * 255).astype(np.uint8)[..., None], 3, -1)
    save_png(out / "dsb_demo_model.png", np.concatenate([rgb, mask_rgb], 1))
    rgb6, _, report["dsb_demo_model_demo_defaults"] = dsb_check(engine, 6, 128)
    save_png(out / "dsb_demo_model_6_steps.png", rgb6)
    held = heldout(engine, test, ["labels", "fluorescence"], args.steps)
    report["heldout_demo_model"] = held["metrics"]
    for mode, gen in held["images"].items():
        k = min(12, len(gen))
        save_png(out / f"heldout_{mode}.png", np.concatenate([
            np.concatenate(list(test.controls[mode][:k]), 1), np.concatenate(list(gen[:k]), 1),
            np.concatenate(list(test.he[:k]), 1)], 0))
    if not args.skip_baseline:
        tiny = Engine(ensure_tiny_model(), device="cpu")
        rgb_t, _, report["dsb_random_tiny_model"] = dsb_check(tiny, 6, 128)
        save_png(out / "dsb_random_tiny_model.png", rgb_t)
        from napari_crafts.training.validation import pick_tiles

        idx = pick_tiles(len(test), args.baseline_tiles)
        sub = type(test)(test.he[idx], {k: v[idx] for k, v in test.controls.items()})
        report["heldout_random_tiny_model"] = heldout(tiny, sub, ["labels", "fluorescence"], args.steps)["metrics"]
        held_sub = heldout(engine, sub, ["labels"], args.steps)["metrics"]
        report["heldout_demo_model_same_tiles_as_baseline"] = held_sub
    report["load_average_end"] = os.getloadavg()
    (out / "checks.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
