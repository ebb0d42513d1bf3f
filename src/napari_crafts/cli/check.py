"""``napari-crafts check FILE_OR_FOLDER... [--json] [--max-tiles N]``: the command over ``export.check``.

Exit code: 0 when at least one image is synthetic, 1 when none is, 2 when an image could not be checked.
"""

from __future__ import annotations

import argparse
import json
import sys

from .._plural import plural
from ..export.check import (
    DEFAULT_MAX_TILES,
    EXIT_ERROR,
    WHOLE_IMAGE_PX,
    ImageReport,
    check_paths,
    exit_code,
    format_report,
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``napari-crafts check`` arguments."""
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER",
                        help="images (PNG, JPEG, (OME-)TIFF, SVS and other slides, OME-Zarr) or folders of them")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text (for scripts)")
    parser.add_argument("--max-tiles", type=int, default=DEFAULT_MAX_TILES,
                        help=f"images over {WHOLE_IMAGE_PX // 2**20} Mpx: check at most this many 512² windows "
                        f"(default {DEFAULT_MAX_TILES})")


def main(args: argparse.Namespace) -> int:
    """Run ``napari-crafts check``; see the module docstring for the exit codes."""
    if args.max_tiles < 1:
        print(f"napari-crafts check: error: --max-tiles must be at least 1, got {args.max_tiles}.", file=sys.stderr)
        return EXIT_ERROR

    def show(rep: ImageReport) -> None:
        print(format_report(rep), flush=True)

    reports = check_paths(args.paths, max_tiles=args.max_tiles, on_report=None if args.json else show)
    code = exit_code(reports)
    summary = {"images": len(reports), "synthetic": sum(r.synthetic for r in reports),
               "errors": sum(bool(r.error) for r in reports), "exit_code": code}
    if args.json:
        print(json.dumps({"reports": [r.to_dict() for r in reports], "summary": summary}, indent=2))
    elif len(reports) > 1:
        print(f"{summary['images']} images: {summary['synthetic']} synthetic, "
              f"{summary['images'] - summary['synthetic'] - summary['errors']} without a sign, "
              f"{plural(summary['errors'], 'error')}")
    return code
