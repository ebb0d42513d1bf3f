"""Headless entry points over the same core as the napari widgets.

    napari-crafts demo              offline demo: trained demo model, nuclei labels → synthetic H&E (OME-Zarr + PNG)
    napari-crafts generate ...      whole slide → pyramidal OME-Zarr on dask.distributed (resumable)
    napari-crafts evaluate GEN REAL the paper's metrics (SSIM, PSNR, MSE, NCC, PLIP-FID/I/T) as a table
    napari-crafts pairs HE OUT      H&E slide (+ nuclei, IF) → training pairs with a held-out band
    napari-crafts train PAIRS --out MODEL   ControlNets / CRAFTS fine-tuning / a small model from scratch
    napari-crafts check PATH...     is an image synthetic H&E from napari-crafts? (provenance, watermark)
    napari-crafts synth OUT ...     a synthetic dataset: prompts → classes, or label tiles → image/mask pairs
    napari-crafts tiny-model PATH   write the tiny random model as a diffusers folder

Errors are one line on stderr (see ``cli._errors``): exit code 2 for what the user can fix, 1 (with the
traceback in a log file, or on screen with --verbose) for anything else. Every command that writes follows the
output rule of ``export.safety``: never over an input, and --overwrite replaces only what napari-crafts wrote.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from pathlib import Path
from typing import Any

from .._plural import plural
from ._errors import ArgumentParser, UsageError, bounded_int, positive_float, run_command
from ._settings import add_settings, settings_from_args, settings_of

__all__ = ["build_parser", "main", "settings_from_args"]

#: Commands whose parser (``configure_parser``) and entry point (``main``) live in their own module.
COMMANDS = {
    "generate": ("napari_crafts.cli.generate", "whole slide → pyramidal OME-Zarr (dask.distributed, resumable)"),
    "evaluate": ("napari_crafts.cli.evaluate", "score synthetic H&E against real H&E: the CRAFTS paper's metrics "
                 "table"),
    "check": ("napari_crafts.cli.check", "is an image synthetic H&E from napari-crafts? provenance and watermark"),
    "pairs": ("napari_crafts.training.pairs_cli", "H&E slide (+ nuclei or IF) → training pairs at the model's "
              "pixel size"),
    "train": ("napari_crafts.training.train_cli", "train ControlNets, fine-tune the base (CRAFTS losses) or a "
              "small model from scratch on a pairs set"),
    "synth": ("napari_crafts.cli.synth", "a synthetic dataset: prompts → class folders, or label tiles → paired "
              "images and masks (resumable)"),
}
#: The demo's steps when none are given (CPU; the paper: 50).
DEMO_STEPS = 6
#: The generation settings the demo takes on its command line.
DEMO_SETTINGS = ("prompt", "seed", "steps", "scheduler", "tile_size", "overlap", "batch_size")
def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from .._sample_data import load_nuclei
    from ..export import save_ome_zarr
    from ..export.png import save_png
    from ..export.safety import check_output
    from ..generation.job import ModelChoice, RegionJob, load_engine, run_job
    from ..generation.region import Progress, Region, TileDone, check_scale, plan_region, run
    from ..generation.sources import LabelsSource
    from ..generation.tiling import seam_score
    from ..model.catalog import is_demo_model, resolve
    from ..model.description import ModelDescription
    from ..model.engine import check_device
    from . import generate as batch_cli

    if args.device:  # before anything is written
        check_device(args.device)
    settings = settings_of(args, *DEMO_SETTINGS, default_steps=DEMO_STEPS)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the demo's output.")
    model_path = Path(resolve(args.model)).expanduser()  # 'demo': the package's folder, never written into
    model = [model_path] if model_path.exists() else []
    paths = {kind: check_output(out / name, kind=kind, inputs=model, overwrite=args.overwrite)
             for kind, name in (("ome-zarr", "synthetic_he.ome.zarr"), ("png", "synthetic_he_SYNTHETIC.png"),
                                ("json", "provenance.json"))}
    name = "nuclei labels (DSB 2018)"
    # a pixel size no run can use is refused before the model loads (its description is a few small files)
    description = ModelDescription.open(args.model, allow_pickle=args.allow_pickle, lora=args.lora)
    check_scale(name, args.mpp, description.mpp)
    if settings.scheduler == "lcm":
        description.check_few_step()  # a student the model declares (of these weights), or --lora
    _, labels = load_nuclei()
    labels = labels[: args.size, : args.size]
    print(f"model: {args.model} (loading…)", flush=True)
    choice = ModelChoice(args.model, device=args.device, allow_pickle=args.allow_pickle, lora=args.lora)
    engine = load_engine(choice, mode="labels")
    source = LabelsSource(labels, name=name, mpp=args.mpp)
    region = Region(0, 0, *labels.shape)
    job = RegionJob(source, region, settings, watermark="--no-watermark" if args.no_watermark else True)

    def report(event: Any) -> None:
        if isinstance(event, TileDone):
            print(f"  tile {event.tiles_done}/{event.tiles}", flush=True)
        elif isinstance(event, Progress) and event.step == event.steps and args.verbose:
            print(f"    step {event.step}/{event.steps}", flush=True)

    result = run(run_job(choice, job, engine=engine), report)
    border, interior = seam_score(result.rgb, plan_region(source, region, engine, settings).grid)
    # one tile has no seams (nan): provenance is strict JSON, so that is null. The watermark's record hash
    # leaves seam_score out (it is measured on the marked output).
    result.provenance["seam_score"] = {k: v if math.isfinite(v) else None
                                       for k, v in (("border", border), ("interior", interior))}
    zarr_path, png = paths["ome-zarr"], paths["png"]
    out.mkdir(parents=True, exist_ok=True)  # only now: a run refused or failed before leaves no folder behind
    save_ome_zarr(zarr_path, result.rgb, mpp=args.mpp, provenance=result.provenance, chunk=256,
                  overwrite=args.overwrite)
    save_png(png, np.concatenate([result.rgb, np.repeat(np.where(labels > 0, 255, 0).astype(np.uint8)[..., None],
                                                                3, axis=-1)], axis=1), result.provenance)
    paths["json"].write_text(json.dumps(result.provenance, indent=2, allow_nan=False))
    for note in result.notes:
        print(f"note: {note}")
    print(f"synthetic H&E: {zarr_path} ({result.rgb.shape[0]}×{result.rgb.shape[1]} px, "
          f"{plural(result.tiles_generated, 'tile')}; {batch_cli.seam_line(border, interior)})")
    print(f"preview (left: synthetic, right: labels): {png}")
    mark = result.provenance["watermark"]
    print(f"watermark: payload {mark['payload']}" if mark["enabled"] else f"watermark: off ({mark['reason']})",
          f"(check any copy with: napari-crafts check {png})")
    print(f"open it in napari: napari {zarr_path}")
    if engine.card.tiny:
        print("This ran the tiny random test model: its pictures are noise-like. Use --model for real weights.")
    elif is_demo_model(engine.path):
        print("This ran the demo model: a toy-scale model trained here on one small CC0 slide (CMU-1) to show the "
              "workflow, not CRAFTS. Use --model for real weights.")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from ..export.safety import check_output, claim_folder
    from ..model.card import MODEL_FOLDER_CONTENTS
    from ..model.tiny import build_tiny_model

    path = check_output(args.path, kind="folder", overwrite=args.overwrite)
    claim_folder(path, "tiny random model (napari-crafts tiny-model)", MODEL_FOLDER_CONTENTS)
    print(build_tiny_model(path, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="napari-crafts", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    from ..model.catalog import default_model
    from . import generate as batch_cli

    demo = sub.add_parser("demo", help="offline demo on real nuclei labels with the bundled demo model")
    demo.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    demo.add_argument("--model", default=default_model(),
                      help="diffusers folder or hub id; 'demo': the bundled model trained on CMU-1, 'tiny-demo': "
                           "the tiny random test model (default: %(default)s)")
    add_settings(demo, *DEMO_SETTINGS, steps=None, tile_size=128, overlap=32, batch_size=4,
                 notes={"steps": f"Default here: {DEMO_STEPS} (for a CPU; lcm: 4)."})
    demo.add_argument("--size", type=bounded_int(16, 512), default=512,
                      help="side of the labels crop to render (≤ 512)")
    demo.add_argument("--mpp", type=positive_float, default=0.25, help="pixel size assumed for the labels (µm/px)")
    demo.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo in --out")
    demo.add_argument("--no-watermark", action="store_true", help=batch_cli.NO_WATERMARK_HELP)
    demo.add_argument("--device", default=None)
    demo.add_argument("--allow-pickle", action="store_true",
                      help="also load pickle weights (.bin/.ckpt), which can run code: only for sources you trust")
    demo.add_argument("--lora", default=None, metavar="PATH", help=batch_cli.LORA_HELP)
    demo.add_argument("--verbose", action="store_true", help="show every step, and tracebacks of errors")
    demo.set_defaults(func=_demo)

    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.configure_parser(command)
        command.set_defaults(func=module.main)

    tiny = sub.add_parser("tiny-model", help="write the tiny random model as a diffusers folder")
    tiny.add_argument("path")
    tiny.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0)
    tiny.add_argument("--overwrite", action="store_true", help="replace a model folder napari-crafts wrote")
    tiny.set_defaults(func=_tiny_model)
    for command in sub.choices.values():  # every command: tracebacks and the libraries' warnings on request
        try:
            command.add_argument("--verbose", action="store_true", help="show tracebacks and library warnings")
        except argparse.ArgumentError:  # the command has its own --verbose
            pass
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, args, lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
