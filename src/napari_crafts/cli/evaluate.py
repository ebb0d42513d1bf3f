"""``napari-crafts evaluate``: arguments, progress on stderr, the paper's table row on stdout, CSV/JSON files.

    napari-crafts evaluate GENERATED REAL [--prompt TEXT] [--clip-model vinid/plip|FOLDER|none] [--csv F] [--json F]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import atomic_file
from ..evaluation import metrics as M
from ..evaluation import plip as P
from ..evaluation.plip_eval import MAX_EMBED_TILES, EvalProgress, load_scorer
from ..evaluation.scoring import DEFAULT_TILE, evaluate_paths
from ..export.safety import GENERATOR_FIELD, check_output, generator_tag
from ._errors import UsageError, bounded_int, run_command


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``napari-crafts evaluate`` arguments."""
    parser.add_argument("generated", help="synthetic H&E: a folder of tiles, or a slide / (OME-)TIFF / OME-Zarr image")
    parser.add_argument("real", help="the real H&E it should match: same kind as GENERATED (tiles paired by file name)")
    parser.add_argument("--prompt", default=None, help="text prompt the images were generated with (for PLIP-T)")
    parser.add_argument("--clip-model", default=P.PLIP_MODEL_ID,
                        help=f"CLIP model for the PLIP metrics: hub id or local folder (default {P.PLIP_MODEL_ID}); "
                        "'none' for pixel metrics only")
    parser.add_argument("--tile", type=bounded_int(16, 16384), default=DEFAULT_TILE,
                        help=f"tile side in px for images (default {DEFAULT_TILE}); folders are scored per file")
    parser.add_argument("--no-mask", action="store_true",
                        help="compare every pixel (default: only the real image's tissue, not background glass)")
    parser.add_argument("--resample", action="store_true",
                        help="if the pixel sizes differ, resample the generated image to the real one's (else refuse)")
    parser.add_argument("--max-tiles", type=bounded_int(1, 10**7), default=MAX_EMBED_TILES,
                        help=f"at most this many tiles of an image are embedded for PLIP (default {MAX_EMBED_TILES})")
    parser.add_argument("--allow-small-fid", action="store_true",
                        help="compute PLIP-FID even with fewer samples than embedding dimensions (unreliable)")
    parser.add_argument("--name", default=None, help="row name in the table (default: the generated path's name)")
    parser.add_argument("--csv", type=Path, default=None, metavar="PATH", help="also write the row as CSV")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the row as JSON")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace CSV/JSON files napari-crafts evaluate wrote before (never other files)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and library warnings")
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
    """Run ``napari-crafts evaluate``: print the paper's table row, write CSV/JSON; errors: one line on stderr."""
    return run_command("evaluate", args, lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    name = args.name or _row_name(args.generated)
    inputs = [args.generated, args.real] + ([args.clip_model] if Path(args.clip_model).expanduser().exists() else [])
    outputs = {kind: check_output(path, kind=kind, inputs=inputs, overwrite=args.overwrite, flag=f"--{kind}")
               for kind, path in (("csv", args.csv), ("json", args.json)) if path is not None}
    if len(outputs) == 2 and outputs["csv"] == outputs["json"]:
        raise UsageError(f"--csv and --json name the same file ({outputs['csv']}): give two paths.")
    same = Path(args.generated).expanduser().resolve() == Path(args.real).expanduser().resolve()
    if same:  # not an error (a smoke test), but a perfect score must not pass for a result
        print(f"warning: GENERATED and REAL are the same ({args.generated}): it is compared with itself, so the "
              "scores are perfect (SSIM 1, MSE 0) and mean nothing.", file=sys.stderr, flush=True)
    scorer = load_scorer(args.clip_model, device=args.device)
    result = evaluate_paths(
        args.generated, args.real, tile=args.tile, mask=None if args.no_mask else "tissue", scorer=scorer,
        prompt=args.prompt, max_tiles=args.max_tiles, allow_rank_deficient=args.allow_small_fid,
        resample=args.resample, on_progress=_progress_printer(),
    )
    rows = {name: result}
    write_marked_results(rows, csv_path=outputs.get("csv"), json_path=outputs.get("json"))
    print(M.format_table(rows))
    for note in result.notes:
        print(f"note: {note}")
    if not same and result.mse == 0:
        print("note: the generated and real images are identical pixel for pixel (MSE 0): is GENERATED a copy of "
              "REAL?")
    for path in (args.csv, args.json):
        if path is not None:
            print(f"wrote {path}")
    return 0


def write_marked_results(rows: dict[str, Any], *, csv_path: Path | None = None, json_path: Path | None = None) -> None:
    """``metrics.write_results``, plus the ``generator`` field that marks the files as ours (``export.safety``):
    a last CSV column and a key in each JSON row, ``napari-crafts <version>``. Each file appears whole or not at
    all (written beside it, then renamed)."""
    tag = generator_tag()
    for kind, path in (("csv", csv_path), ("json", json_path)):
        if path is None:
            continue
        with atomic_file(path, unique=True) as tmp:
            M.write_results(rows, **{f"{kind}_path": tmp})
            if kind == "csv":
                with open(tmp, newline="", encoding="utf-8") as fh:
                    table = csv.DictReader(fh)
                    fields, records = [*(table.fieldnames or []), GENERATOR_FIELD], list(table)
                with open(tmp, "w", newline="", encoding="utf-8") as fh:
                    writer = csv.DictWriter(fh, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows({**r, GENERATOR_FIELD: tag} for r in records)
            else:
                data = json.loads(tmp.read_text(encoding="utf-8"))
                marked = {row: {**fields, GENERATOR_FIELD: tag} for row, fields in data.items()}
                tmp.write_text(json.dumps(marked, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                               encoding="utf-8")
