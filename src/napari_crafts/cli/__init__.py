"""Headless entry points over the same core as the napari widgets.

    napari-crafts demo              offline demo: tiny model, real nuclei labels → synthetic H&E (OME-Zarr + PNG)
    napari-crafts generate ...      whole slide → pyramidal OME-Zarr on dask.distributed (resumable)
    napari-crafts evaluate GEN REAL the paper's metrics (SSIM, PSNR, MSE, NCC, PLIP-FID/I/T) as a table
    napari-crafts pairs HE OUT      H&E slide (+ nuclei, IF) → training pairs with a held-out band
    napari-crafts tiny-model PATH   write the tiny random model as a diffusers folder

Errors are printed as one line (no traceback) and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..model.card import CRAFTS_MASK_PROMPT

def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault: printed as one line, no traceback."""
    from ..generation.region import GenerationError

    return (ValueError, GenerationError, FileExistsError, FileNotFoundError, RuntimeError)


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from .._sample_data import load_nuclei
    from ..model.engine import get_engine
    from ..export import save_ome_zarr
    from ..generation.region import GenerationSettings, Progress, Region, TileDone, generate_region, plan_region, run
    from ..generation.sources import LabelsSource
    from ..generation.tiling import seam_score

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, labels = load_nuclei()
    labels = labels[: args.size, : args.size]
    print(f"model: {args.model} (loading…)", flush=True)
    engine = get_engine(args.model, device=args.device, allow_pickle=args.allow_pickle)
    source = LabelsSource(labels, name="nuclei labels (DSB 2018)", mpp=args.mpp)
    settings = GenerationSettings(
        prompt=args.prompt, seed=args.seed, steps=args.steps, tile_size=args.tile_size, overlap=args.overlap,
        batch_size=args.batch,
    )
    region = Region(0, 0, *labels.shape)

    def report(event: Any) -> None:
        if isinstance(event, TileDone):
            print(f"  tile {event.tiles_done}/{event.tiles}", flush=True)
        elif isinstance(event, Progress) and event.step == event.steps and args.verbose:
            print(f"    step {event.step}/{event.steps}", flush=True)

    result = run(generate_region(engine, source, region, settings), report)
    border, interior = seam_score(result.rgb, plan_region(source, region, engine, settings).grid)
    result.provenance["seam_score"] = {"border": border, "interior": interior}
    zarr_path = out / "synthetic_he.ome.zarr"
    save_ome_zarr(zarr_path, result.rgb, mpp=args.mpp, provenance=result.provenance, chunk=256, overwrite=True)
    png = out / "synthetic_he_SYNTHETIC.png"
    _save_png(png, np.concatenate([result.rgb, np.repeat(np.where(labels > 0, 255, 0).astype(np.uint8)[..., None],
                                                                3, axis=-1)], axis=1), result.provenance)
    (out / "provenance.json").write_text(json.dumps(result.provenance, indent=2))
    for note in result.notes:
        print(f"note: {note}")
    print(f"synthetic H&E: {zarr_path} ({result.rgb.shape[0]}×{result.rgb.shape[1]} px, "
          f"{result.tiles_generated} tiles, seam score border/interior {border:.2f}/{interior:.2f})")
    print(f"preview (left: synthetic, right: labels): {png}")
    print(f"open it in napari: napari {zarr_path}")
    if engine.card.tiny:
        print("This ran the tiny random demo model: its pictures are noise-like. Use --model for real weights.")
    return 0


def _save_png(path: Path, rgb: Any, provenance: dict[str, Any]) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", "napari-crafts")
    info.add_text("Description", provenance["warning"])
    info.add_text("napari_crafts", json.dumps(provenance))
    Image.fromarray(rgb).save(path, pnginfo=info)


def _tiny_model(args: argparse.Namespace) -> int:
    from ..model.tiny import build_tiny_model

    print(build_tiny_model(args.path, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-crafts", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="offline demo on real nuclei labels with the tiny model")
    demo.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    demo.add_argument("--model", default="tiny-demo", help="diffusers folder or hub id (default: tiny-demo)")
    demo.add_argument("--prompt", default=CRAFTS_MASK_PROMPT)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=6, help="denoising steps (paper: 50; demo default 6 for CPU)")
    demo.add_argument("--tile-size", type=int, default=128, help="tile side in model px (paper: 512)")
    demo.add_argument("--overlap", type=int, default=32)
    demo.add_argument("--batch", type=int, default=4)
    demo.add_argument("--size", type=int, default=512, help="side of the labels crop to render (≤ 512)")
    demo.add_argument("--mpp", type=float, default=0.25, help="pixel size assumed for the labels (µm/px)")
    demo.add_argument("--device", default=None)
    demo.add_argument("--allow-pickle", action="store_true",
                      help="also load pickle weights (.bin/.ckpt), which can run code: only for sources you trust")
    demo.add_argument("--verbose", action="store_true")
    demo.set_defaults(func=_demo)

    from . import generate as batch_cli

    gen = sub.add_parser("generate", help="whole slide → pyramidal OME-Zarr (dask.distributed, resumable)")
    batch_cli.configure_parser(gen)
    gen.set_defaults(func=batch_cli.main)

    from . import evaluate

    ev = sub.add_parser("evaluate", help="score synthetic H&E against real H&E: the CRAFTS paper's metrics table")
    evaluate.configure_parser(ev)
    ev.set_defaults(func=evaluate.main)

    from ..training import pairs_cli

    pairs = sub.add_parser("pairs", help="H&E slide (+ nuclei or IF) → training pairs at the model's pixel size")
    pairs_cli.configure_parser(pairs)
    pairs.set_defaults(func=pairs_cli.main)

    tiny = sub.add_parser("tiny-model", help="write the tiny random model as a diffusers folder")
    tiny.add_argument("path")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        print(f"napari-crafts {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-crafts {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
