"""``napari-crafts generate``: the whole-slide command line over ``wsi.job.generate_slide``."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from ..export import open_ome_zarr
from ..generation.tiling import TileGrid, seam_score
from ..io.slide import KINDS
from ._errors import UsageError, bounded_int, positive_float, run_command
from ._settings import add_settings, settings_of

#: Names of single files (not folders): an OUTPUT named so is refused (generate writes an OME-Zarr folder).
FILE_SUFFIXES = (".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg", ".svs", ".ndpi", ".qptiff", ".json", ".csv")
#: Side of the level-0 sample the CLI reports a seam score on.
SEAM_SAMPLE = 2048
#: The generation settings ``generate`` takes on its command line (their flags: ``generation.settings``).
GENERATE_SETTINGS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "scheduler", "cfg_cutoff",
                     "cache_interval", "tile_size", "overlap", "batch_size", "controlnet")
LORA_HELP = ("a LoRA for the UNet (and ControlNet, where it has weights for it): a .safetensors file or a folder "
             "holding one (diffusers, peft or kohya layout); pickle only with --allow-pickle; its SHA-256 goes into "
             "the provenance")
NO_WATERMARK_HELP = ("leave the invisible watermark out of the pixels (recorded in the provenance, which still says "
                     "synthetic; see docs/watermark.md)")


def sample_seam_score(path: str | Path, side: int = SEAM_SAMPLE) -> tuple[float, float]:
    """``tiling.seam_score`` on an up to side×side window of level 0, cut along the tile grid near the centre."""
    writer = open_ome_zarr(path)
    prov = writer.provenance()
    tile, overlap = int(prov["tile_size_source_px"]), int(prov["overlap_source_px"])
    stride = tile - overlap
    box = []
    for n in writer.shape_yx:  # a window starting and ending on tile starts sees exactly the grid's edges
        size = n if n <= side else max(1, side // stride) * stride
        start = 0 if n <= side else (n - size) // 2 // stride * stride
        box.append((start, min(start + size, n)))
    (y0, y1), (x0, x1) = box
    rgb = writer.read_region(0, y0, x0, y1, x1)
    return seam_score(rgb, TileGrid(y1 - y0, x1 - x0, tile, min(overlap, tile // 2)))


def seam_line(border: float, interior: float) -> str:
    """The seam score as the commands print it; "n/a" where the image has no tile edge (one tile)."""
    if not (math.isfinite(border) and math.isfinite(interior)):
        return "seam score: n/a (one tile: no seams)"
    return f"seam score (mean step at tile edges / inside tiles; ≈1 is seam-free): {border:.2f}/{interior:.2f}"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``napari-crafts generate`` arguments."""
    parser.add_argument("source", help="nuclear labels or fluorescence: (OME-)TIFF, OME-Zarr, SVS/NDPI/…, or "
                        "nuclei polygons as GeoJSON (QuPath export, level-0 pixels; needs --mpp)")
    parser.add_argument("output", help="OME-Zarr folder to write (e.g. slide_synthetic.ome.zarr)")
    parser.add_argument("--model", required=True,
                        help="diffusers folder or hub id of the CRAFTS model ('tiny-demo': tiny random test model)")
    parser.add_argument("--lora", default=None, metavar="PATH", help=LORA_HELP)
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also load pickle weights (.bin/.ckpt), which can run code: only for sources you trust")
    add_settings(parser, *GENERATE_SETTINGS, steps=None, notes={"steps": "Default: 50; lcm: 4."})
    parser.add_argument("--mpp", type=positive_float, default=None,
                        help="source pixel size in µm/px (overrides the file's)")
    parser.add_argument("--kind", choices=[k for k in KINDS if k != "rgb"], default=None,
                        help="read the source as labels or channels (default: from the file)")
    parser.add_argument("--tissue", default="auto", metavar="auto|all|FILE",
                        help="where the tissue is: auto (from the nuclei or the fluorescence signal; default), all "
                             "(everything is tissue), or a mask image (TIFF/PNG/OME-Zarr, non-zero = tissue, the "
                             "source's size or a thumbnail) or QuPath GeoJSON annotations; tiles without tissue "
                             "are glass")
    parser.add_argument("--channels", default=None, metavar="NAME=ROLE,...",
                        help="roles of fluorescence channels, by the names the file stores (or index): e.g. "
                             "DAPI=nuclear,FITC=cytoplasm; roles: nuclear, cytoplasm, membrane, other (default: "
                             "guessed from the names)")
    parser.add_argument("--scheduler-address", default=None, help="use this dask scheduler instead of a local cluster")
    parser.add_argument("--workers", type=bounded_int(1, 1024), default=None,
                        help="local worker processes (default: one per GPU; on CPU by cores and memory)")
    parser.add_argument("--threads-per-worker", type=bounded_int(1, 1024), default=1,
                        help="torch threads per worker (keep it when resuming: CPU results depend on it)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: one GPU per worker)")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the networks in channels-last memory layout (a GPU speed-up; same maths)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet and ControlNet (pays off on long GPU runs; slow first tile)")
    parser.add_argument("--chunk", type=bounded_int(16, 8192), default=512,
                        help="OME-Zarr chunk side in px (default 512)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted run (same settings)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace an existing output (only one napari-crafts wrote; never an input)")
    parser.add_argument("--tiff", type=Path, default=None, metavar="PATH", help="also write a pyramidal OME-TIFF")
    parser.add_argument("--no-watermark", action="store_true", help=NO_WATERMARK_HELP)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and library warnings")


def main(args: argparse.Namespace) -> int:
    """Run ``napari-crafts generate``; errors are one line on stderr (see ``cli._errors``)."""
    return run_command("generate", args, lambda: _generate(args), interrupted="; rerun with --resume to continue")


def _generate(args: argparse.Namespace) -> int:
    from ..generation.job import ModelChoice
    from ..model.engine import check_device
    from ..wsi.job import SlideOptions, generate_slide

    settings = settings_of(args, *GENERATE_SETTINGS)  # every number is checked before anything starts
    named = Path(args.output)
    is_source = named.resolve() == Path(args.source).resolve()  # the output rule says that, first and louder
    if named.suffix.lower() in FILE_SUFFIXES and not named.is_dir() and not is_source:  # a folder is written
        zarr = named.with_name(named.name[: -len(named.suffix)] + ".ome.zarr")
        tiff = f" (and add --tiff {named} for a pyramidal OME-TIFF as well)" if "tif" in named.suffix.lower() else ""
        raise UsageError(f"OUTPUT {named} is named like a {named.suffix} file, but generate writes an OME-Zarr "
                         f"folder: name it {zarr}{tiff}.")
    if args.resume and not os.path.lexists(args.output):  # a script may always pass --resume: go on, but say so
        print(f"note: nothing to resume at {args.output} (no earlier run there): starting a new run.", flush=True)
    if args.device and not args.scheduler_address:  # the workers would run here: refuse now, not in each worker
        check_device(args.device)
    model = ModelChoice(args.model, device=args.device, allow_pickle=args.allow_pickle, lora=args.lora)
    options = SlideOptions(
        mpp=args.mpp, kind=args.kind, channels=args.channels, tissue=args.tissue,
        scheduler_address=args.scheduler_address, n_workers=args.workers, threads_per_worker=args.threads_per_worker,
        channels_last=args.channels_last, compile=args.compile, chunk=args.chunk, resume=args.resume,
        overwrite=args.overwrite, tiff=args.tiff, watermark="--no-watermark" if args.no_watermark else True,
    )
    out = generate_slide(args.source, args.output, model, settings, options)
    print(seam_line(*sample_seam_score(out)))
    print(f"synthetic H&E: {out}" + (f" and {args.tiff}" if args.tiff else ""))
    return 0
