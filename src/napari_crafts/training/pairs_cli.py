"""``napari-crafts pairs``: an H&E slide (+ nuclei or fluorescence) → a training set (``training.pairs``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._generators import run
from .._plural import plural
from ..model.card import CONTROL_ENCODINGS, NUCLEI_TISSUE_V1
from .nuclei import NucleiParams
from .pairs import PairsOptions, PairsProgress, iter_pairs, parse_band

EXAMPLE = ("example: napari-crafts pairs slide.svs pairs/ --nuclei auto --simulate-if --mpp 0.5 --tile-px 128 "
           "--stride-px 64")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``napari-crafts pairs`` arguments."""
    d = PairsOptions()
    parser.epilog = EXAMPLE
    parser.add_argument("he", help="H&E slide or image: SVS/NDPI/…, (OME-)TIFF or OME-Zarr")
    parser.add_argument("output", help="dataset folder to write (must not exist, see --overwrite)")
    parser.add_argument("--nuclei", default="auto", metavar="auto|FILE|none",
                        help="'auto' (default): built-in classical segmentation of the H&E; FILE: nuclear labels "
                        "on the H&E's pixel grid (TIFF, OME-Zarr, or GeoJSON polygons in level-0 px); "
                        "'none': no labels control")
    parser.add_argument("--fluorescence", type=Path, default=None, metavar="FILE",
                        help="co-registered immunofluorescence channels on the H&E's pixel grid")
    parser.add_argument("--channels", default=None, metavar="NAME=ROLE,...",
                        help="roles of the fluorescence channels, e.g. DAPI=nuclear,panCK=cytoplasm "
                        "(names or indices; roles nuclear, cytoplasm, membrane, other; default: guessed by name)")
    parser.add_argument("--simulate-if", action="store_true",
                        help="no real IF: derive a nuclear channel from haematoxylin and a cytoplasm channel from "
                        "eosin (colour deconvolution; recorded as simulated)")
    parser.add_argument("--model", default=None, metavar="FOLDER",
                        help="model folder whose napari_crafts.json gives the model's pixel size")
    parser.add_argument("--mpp", type=float, default=None,
                        help="the model's pixel size in µm/px (default: from --model); tiles are cut at this scale")
    parser.add_argument("--source-mpp", type=float, default=None,
                        help="the H&E's pixel size in µm/px (overrides the file's)")
    parser.add_argument("--tile-px", type=int, default=d.tile_px, help=f"tile side in model px (default {d.tile_px})")
    parser.add_argument("--stride-px", type=int, default=None,
                        help="distance between tile origins in model px (default: half a tile)")
    parser.add_argument("--min-tissue", type=float, default=d.min_tissue,
                        help=f"minimum tissue fraction of a tile (default {d.min_tissue})")
    parser.add_argument("--test-band", default=None, metavar="Y0:Y1",
                        help="held-out rows in H&E level-0 px (default: the last --test-fraction of the rows)")
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction,
                        help=f"held-out fraction of the rows, at the bottom (default {d.test_fraction}; 0: no test)")
    parser.add_argument("--nuclei-threshold", type=float, default=None, metavar="OD",
                        help="haematoxylin OD threshold for --nuclei auto (default: Otsu over the slide's tissue)")
    parser.add_argument("--nuclei-min-area", type=float, default=NucleiParams.min_area_um2, metavar="UM2",
                        help=f"--nuclei auto: smallest nucleus kept, µm² (default {NucleiParams.min_area_um2})")
    parser.add_argument("--nuclei-min-solidity", type=float, default=NucleiParams.min_solidity, metavar="S",
                        help="--nuclei auto: least solidity (area / convex hull area) of a nucleus kept "
                             f"(default {NucleiParams.min_solidity})")
    parser.add_argument("--control-encoding", default=d.control_encoding, choices=CONTROL_ENCODINGS["labels"],
                        help=f"how the labels controls are drawn (default {d.control_encoding}: the paper's mask, "
                        f"nuclei 255 on 0); {NUCLEI_TISSUE_V1}: glass 0, tissue 128 (from the H&E), nuclei 255. "
                        "A model trained on these pairs declares it in its napari_crafts.json")
    parser.add_argument("--caption", default=None, help="caption of every tile (default: the CRAFTS prompt)")
    parser.add_argument("--category", default=None, help="optional category text of every tile")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT if it is a dataset napari-crafts pairs wrote (nothing else)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> PairsOptions:
    """The :class:`PairsOptions` of parsed arguments (PairsError for malformed values)."""
    nuclei: Any = None if str(args.nuclei).lower() == "none" else (
        "auto" if str(args.nuclei).lower() == "auto" else Path(args.nuclei))
    band = parse_band(args.test_band) if args.test_band else None
    return PairsOptions(
        nuclei=nuclei, fluorescence=args.fluorescence,
        channels=args.channels, simulate_if=args.simulate_if,
        mpp=args.mpp, model=args.model, source_mpp=args.source_mpp, tile_px=args.tile_px, stride_px=args.stride_px,
        min_tissue=args.min_tissue, test_band=band, test_fraction=args.test_fraction,
        caption=args.caption, category=args.category, control_encoding=args.control_encoding,
        nuclei_params=NucleiParams(
            threshold=args.nuclei_threshold, min_area_um2=args.nuclei_min_area,
            min_solidity=args.nuclei_min_solidity),
    )


def main(args: argparse.Namespace) -> int:
    """Run ``napari-crafts pairs``. Errors reach ``cli.main``, which reports them in one line (``cli._errors``);
    a failed or interrupted run leaves nothing behind."""
    bars: dict[str, Any] = {}
    gen = iter_pairs(args.he, args.output, options_from_args(args), overwrite=args.overwrite)
    try:
        out = run(gen, None if args.quiet else lambda event: _show(bars, event))
    finally:
        gen.close()
        for bar in bars.values():
            bar.close()
    import json

    card = json.loads((out / "dataset.json").read_text())
    c = card["counts"]
    print(f"train {plural(c['train'], 'tile')}, test {plural(c['test'], 'tile')} ({card['tile_px']} px at "
          f"{card['mpp']:g} µm/px); "
          f"skipped: {c['skipped_no_tissue']} without tissue, {c['skipped_no_nuclei']} without nuclei, "
          f"{c['dropped_near_band']} next to the test band")
    if card["nuclei"] and card["nuclei"]["method"] == "auto":
        f = card["nuclei"]["found"]
        print(f"auto nuclei: {f['count']}, mean area {f['mean_area_um2']} µm², haematoxylin inside/outside "
              f"{f['h_od_ratio']}")
    if card["fluorescence"] and card["fluorescence"]["simulated"]:
        print("fluorescence controls are SIMULATED from the H&E (colour deconvolution), not real IF")
    print(f"dataset: {out} (preview: {out / 'preview.png'})")
    return 0


def _show(bars: dict[str, Any], event: PairsProgress) -> None:
    from tqdm import tqdm

    what = {"nuclei": "segmenting nuclei (blocks)", "tiles": "cutting tiles"}.get(event.stage, event.stage)
    bar = bars.get(event.stage)
    if bar is None:  # a new stage: the previous one is finished
        for old in bars.values():
            old.close()
        bar = bars[event.stage] = tqdm(total=event.total, desc=what, unit="", file=sys.stderr)
    bar.update(event.done - bar.n)
    if event.stage == "tiles":
        bar.set_postfix(train=event.train, test=event.test, refresh=False)
