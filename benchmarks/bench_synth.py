"""Measure ``napari-crafts synth``: throughput against the engine alone on the same tiles, and resume after SIGKILL.

Throughput (``--images N``, both kinds, the bundled demo model, one image = one model tile, batch 1):

- *engine alone*: ``generation.region.render_tiles`` on each image's tile (the noise, the control image, the model
  call, nothing else), timed before and after the synth run (the mean of the two: the shared CPU's load drifts);
- *synth*: ``synth.run.synthesize`` into a temporary folder: the same model calls, plus the watermark, the H&E
  checks, the PNG/mask writes, the records, the card and the diversity figure; also the share of its wall time
  spent inside ``Engine.generate`` (robust to the load: both are timed within one run).

Resume (``--resume-check``): ``napari-crafts synth`` in a subprocess, SIGKILLed once a few images are finished,
then rerun with ``--resume``; every file is compared byte for byte with an uninterrupted run (both with
``SOURCE_DATE_EPOCH`` set, so the two runs share their ``created`` time).

    nice -n 10 python benchmarks/bench_synth.py [--images 16] [--steps 6] [--resume-check] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MASK = REPO / "tests" / "data" / "stardist_dsb2018_mask2d.tif"


def engine_alone(engine: Any, plan: Any, settings: Any) -> float:
    """Seconds for the model calls of every image of ``plan``, as ``generate_region`` would make them."""
    import dataclasses

    from napari_crafts._generators import run
    from napari_crafts.generation.region import Region, plan_region, render_tiles
    from napari_crafts.generation.sources import LabelsSource
    from napari_crafts.synth.plan import read_mask

    start = time.perf_counter()
    for item in plan.items:
        s = dataclasses.replace(settings, seed=item.seed, prompt=item.prompt or settings.prompt)
        if item.mask is not None:
            labels = read_mask(item)
            source: Any = LabelsSource(labels, name=item.id, mpp=item.mask.mpp, tissue="all")
            region = Region(0, 0, *labels.shape)
        else:
            source, region = None, Region(0, 0, plan.size, plan.size)
        p = plan_region(source, region, engine, s)
        run(render_tiles(engine, source, p, list(p.grid.tiles), s))
    return time.perf_counter() - start


def synth_run(engine: Any, plan: Any, settings: Any, folder: Path) -> tuple[float, float]:
    """(wall seconds, seconds inside Engine.generate) of one synthesize run."""
    from napari_crafts._generators import run
    from napari_crafts.synth.run import dataset_state, start_dataset, synthesize

    inside = [0.0]
    original = engine.generate

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = yield from original(*args, **kwargs)
        inside[0] += time.perf_counter() - t
        return out

    engine.generate = timed
    try:
        state = dataset_state(plan, settings, "demo", reject_below={}, watermark=True, tissue="all")
        start = time.perf_counter()
        created = start_dataset(folder, state)
        run(synthesize(engine, plan, folder, settings, created=created, tissue="all"))
        wall = time.perf_counter() - start
    finally:
        del engine.generate
    return wall, inside[0]


def throughput(images: int, steps: int) -> dict[str, Any]:
    from napari_crafts.generation.region import GenerationSettings
    from napari_crafts.model.engine import get_engine
    from napari_crafts.synth import plan_classes, plan_pairs

    engine = get_engine("demo")
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "prompts.csv"
        csv.write_text(
            "LUAD,H&E-stained histopathology image of lung adenocarcinoma\n"
            "BRCA,H&E-stained histopathology image of breast invasive carcinoma\n"
        )
        plans = {
            # 256 px at the demo's 0.5 µm/px: one 256-px model tile per image
            "classes (256 px)": (plan_classes(str(csv), count=images // 2, size=256), 256),
            # 128-px DSB label tiles at 0.25 µm/px: one 64-px model tile per image (the demo is 0.5 µm/px)
            "pairs (128-px masks at 0.25 µm/px)": (
                plan_pairs(MASK, count=max(1, images // 16), tile_px=128, mpp=0.25),
                128,
            ),
        }
        for name, (plan, tile) in plans.items():
            settings = GenerationSettings(steps=steps, tile_size=tile, overlap=32, batch_size=1)
            engine_alone(engine, plan, settings)  # warm-up: prompt cache, ControlNet load
            before = engine_alone(engine, plan, settings)
            wall, inside = synth_run(engine, plan, settings, Path(tmp) / name.split()[0])
            after = engine_alone(engine, plan, settings)
            n = len(plan.items)
            alone = (before + after) / 2
            rows[name] = {
                "images": n,
                "steps": steps,
                "engine_alone_images_per_s": n / alone,
                "synth_images_per_s": n / wall,
                "synth_vs_engine_alone": alone / wall,
                "share_inside_engine": inside / wall,
                "engine_alone_s": [before, after],
                "synth_s": wall,
            }
            print(json.dumps({name: rows[name]}), flush=True)
    return rows


def resume_check(images: int, steps: int) -> dict[str, Any]:
    """SIGKILL a CLI run after a few images, resume it, compare every file with an uninterrupted run."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    with tempfile.TemporaryDirectory() as tmp:
        base = [
            str(Path(sys.executable).parent / "napari-crafts"),
            "synth",
            "--model",
            "demo",
            "--labels",
            str(MASK),
            "--mpp",
            "0.25",
            "--tile-px",
            "128",
            "--count",
            str(max(1, images // 16)),
            "--augment",
            "--steps",
            str(steps),
            "--tile-size",
            "128",
        ]
        whole, killed = Path(tmp) / "whole", Path(tmp) / "killed"
        subprocess.run([*base[:2], str(whole), *base[2:]], env=env, check=True, capture_output=True)
        proc = subprocess.Popen(
            [*base[:2], str(killed), *base[2:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        items = killed / "_synth" / "items"
        while proc.poll() is None and (len(list(items.glob("*.json"))) if items.is_dir() else 0) < 3:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_at_kill = len(list(items.glob("*.json")))
        resumed = subprocess.run(
            [*base[:2], str(killed), *base[2:], "--resume"], env=env, capture_output=True, text=True
        )
        files = {p.relative_to(whole).as_posix() for p in whole.rglob("*") if p.is_file()}
        other = {p.relative_to(killed).as_posix() for p in killed.rglob("*") if p.is_file()}
        same = files == other and all((whole / f).read_bytes() == (killed / f).read_bytes() for f in files)
        out = {
            "images": len(list((whole / "images").glob("*.png"))),
            "finished_when_killed": done_at_kill,
            "resume_rc": resumed.returncode,
            "files": len(files),
            "byte_identical": same,
        }
        print(json.dumps({"resume": out}), flush=True)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--resume-check", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    result: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "throughput": throughput(args.images, args.steps),
    }
    if args.resume_check:
        result["resume"] = resume_check(args.images, args.steps)
    result["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
