"""``napari-crafts evaluate``: arguments, progress on stderr, the paper's table row on stdout, CSV/JSON files.

    napari-crafts evaluate GENERATED REAL [--prompt TEXT] [--clip-model vinid/plip|FOLDER|none] [--csv F] [--json F]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..evaluation import metrics as M
from ..evaluation import plip as P
from ..evaluation.plip_eval import MAX_EMBED_TILES, EvalProgress, load_scorer
from ..evaluation.scoring import DEFAULT_TILE, evaluate_paths


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``napari-crafts evaluate`` arguments."""
    parser.add_argument("generated", help="synthetic H&E: a folder of tiles, or a slide / (OME-)TIFF / OME-Zarr image")
    parser.add_argument("real", help="the real H&E it should match: same kind as GENERATED (tiles paired by file name)")
    parser.add_argument("--prompt", default=None, help="text prompt the images were generated with (for PLIP-T)")
    parser.add_argument("--clip-model", default=P.PLIP_MODEL_ID,
                        help=f"CLIP model for the PLIP metrics: hub id or local folder (default {P.PLIP_MODEL_ID}); "
                        "'none' for pixel metrics only")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                        help=f"tile side in px for images (default {DEFAULT_TILE}); folders are scored per file")
    parser.add_argument("--no-mask", action="store_true",
                        help="compare every pixel (default: only the real image's tissue, not background glass)")
    parser.add_argument("--resample", action="store_true",
                        help="if the pixel sizes differ, resample the generated image to the real one's (else refuse)")
    parser.add_argument("--max-tiles", type=int, default=MAX_EMBED_TILES,
                        help=f"at most this many tiles of an image are embedded for PLIP (default {MAX_EMBED_TILES})")
    parser.add_argument("--allow-small-fid", action="store_true",
                        help="compute PLIP-FID even with fewer samples than embedding dimensions (unreliable)")
    parser.add_argument("--name", default=None, help="row name in the table (default: the generated path's name)")
    parser.add_argument("--csv", type=Path, default=None, metavar="PATH", help="also write the row as CSV")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the row as JSON")
    parser.add_argument("--device", default=None, help="where the CLIP model runs: cuda, mps or cpu (default: auto)")


def _row_name(path: str | Path) -> str:
    from .._reader import layer_name

    return layer_name(Path(path).expanduser().absolute())


def _progress_printer() -> Callable[[EvalProgress], None]:
    shown: dict[str, int] = {}

    def show(event: EvalProgress) -> None:
        step = max(1, event.total // 10)
        if event.done == event.total or event.done - shown.get(event.stage, 0) >= step:
            shown[event.stage] = event.done
            what = "tiles scored" if event.stage == "tiles" else "tiles embedded"
            print(f"  {event.done}/{event.total} {what}", file=sys.stderr, flush=True)

    return show


def main(args: argparse.Namespace) -> int:
    """Run ``napari-crafts evaluate``: print the paper's table row, write CSV/JSON; errors: one line, exit 2."""
    name = args.name or _row_name(args.generated)
    try:
        scorer = load_scorer(args.clip_model, device=args.device)
        result = evaluate_paths(
            args.generated, args.real, tile=args.tile, mask=None if args.no_mask else "tissue", scorer=scorer,
            prompt=args.prompt, max_tiles=args.max_tiles, allow_rank_deficient=args.allow_small_fid,
            resample=args.resample, on_progress=_progress_printer(),
        )
        rows = {name: result}
        M.write_results(rows, csv_path=args.csv, json_path=args.json)
    except (ValueError, OSError) as err:
        print(f"napari-crafts evaluate: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(M.format_table(rows))
    for note in result.notes:
        print(f"note: {note}")
    for path in (args.csv, args.json):
        if path is not None:
            print(f"wrote {path}")
    return 0
