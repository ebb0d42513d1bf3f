"""``napari-crafts synth OUT --model M (--prompts presets|FILE.csv | --labels PATH) --count N``: a dataset.

Every input is checked (``synth.plan``), and the output rule applied, before the model loads; then
``synth.run.synthesize`` makes the images one by one, with progress and the time left on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .._plural import plural
from ..model.card import CRAFTS_MASK_PROMPT
from ._errors import UsageError, bounded_int, positive_float, run_command
from ._settings import add_settings

#: The generation settings ``synth`` takes on its command line (their flags: ``generation.settings``).
SYNTH_SETTINGS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "scheduler", "tile_size", "overlap",
                  "batch_size")
EXAMPLE = (
    "examples: napari-crafts synth tcga-set --model demo --prompts presets --count 100\n"
    "          napari-crafts synth pairs-set --model demo --labels tiles/ --count 4 --augment"
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The ``napari-crafts synth`` arguments."""
    parser.epilog = EXAMPLE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("out", metavar="OUT", help="dataset folder to write (must not exist; see --resume)")
    parser.add_argument("--model", required=True, help="diffusers folder or hub id ('demo': the bundled demo model)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--prompts",
        metavar="presets|FILE.csv",
        help="prompts → classes: 'presets' (one class per TCGA project) or a CSV of "
        "class,prompt[,count]; images go to OUT/images/<class>/",
    )
    what.add_argument(
        "--labels",
        metavar="PATH",
        help="masks → pairs: a folder of label tiles (TIFF/PNG) or one large labels image cut into "
        "--tile-px tiles; OUT/images/<id>.png + OUT/masks/<id>.tif",
    )
    parser.add_argument(
        "--count",
        type=bounded_int(-(2**31), 2**31),
        default=1,
        help="images per class (prompt row) or per mask tile, each with its own seed (default 1)",
    )
    parser.add_argument(
        "--size",
        type=bounded_int(32, 4096),
        default=256,
        help="prompts: image side in px at the model's pixel size (default 256)",
    )
    parser.add_argument(
        "--tile-px",
        type=bounded_int(32, 8192),
        default=256,
        help="labels: tile side in px when one large image is cut (default 256)",
    )
    parser.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        help="labels: pixel size in µm/px (overrides the files'; needed for PNG masks)",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="labels: copies 2… of each tile get 90° turns, flips and nucleus dropout (recorded)",
    )
    parser.add_argument(
        "--tissue",
        choices=("auto", "all"),
        default="auto",
        help="labels: where the tissue is (auto: from the nuclei; all: everywhere)",
    )
    parser.add_argument(
        "--reject-below",
        action="append",
        default=[],
        metavar="CHECK=VALUE",
        help="drop images whose H&E check is below VALUE: H_ratio (pairs) or red_gt_green; repeat for both",
    )
    add_settings(
        parser, *SYNTH_SETTINGS, prompt=None, steps=None, tile_size=256, overlap=32,
        notes={"steps": "Default: 50; lcm: 4.",
               "prompt": "Labels: default the model's, else the CRAFTS prompt; prompts: the file's or the presets'.",
               "seed": "Image k of the dataset gets seed + k."},
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best here)")
    parser.add_argument(
        "--workers",
        type=bounded_int(1, 1024),
        default=None,
        help="make the images on a local dask cluster of this many worker processes (default: in this process)",
    )
    parser.add_argument(
        "--scheduler-address", default=None, help="make the images on this dask scheduler's workers instead"
    )
    parser.add_argument(
        "--threads-per-worker",
        type=bounded_int(1, 1024),
        default=1,
        help="torch threads per worker (keep it when resuming: CPU pixels depend on it)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle weights (.bin/.ckpt), which can run code: only for sources you trust",
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted run (same command)")
    again.add_argument(
        "--overwrite", action="store_true", help="replace a dataset napari-crafts wrote (only one holding nothing else)"
    )
    from .generate import NO_WATERMARK_HELP

    parser.add_argument("--no-watermark", action="store_true", help=NO_WATERMARK_HELP)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and library warnings")


def main(args: argparse.Namespace) -> int:
    """Run ``napari-crafts synth``; errors are one line on stderr (see ``cli._errors``)."""
    return run_command("synth", args, lambda: _synth(args), interrupted="; rerun with --resume to continue")


def parse_reject(values: list[str], kind: str) -> dict[str, float]:
    """``["H_ratio=1.5", …]`` → {check: threshold}; one line for a value synth cannot use."""
    import math

    from ..synth.run import CHECKS

    out: dict[str, float] = {}
    for text in values:
        name, _, number = text.partition("=")
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if name not in CHECKS or not math.isfinite(value):
            raise UsageError(f"--reject-below {text}: write CHECK=VALUE with CHECK one of {', '.join(CHECKS)}.")
        if name == "H_ratio" and kind != "pairs":
            raise UsageError(
                "--reject-below H_ratio needs masks (--labels): prompt images have no nuclei to measure it in."
            )
        out[name] = value
    return out


def _synth(args: argparse.Namespace) -> int:
    from ..model.catalog import resolve
    from ..model.description import ModelDescription
    from ..synth import plan_classes, plan_pairs
    from ..synth.run import check_dataset_output, dataset_state, start_dataset, synthesize
    from ._settings import settings_of

    if args.count < 1:
        raise UsageError(f"--count {args.count}: give at least 1 image per class (or per mask).")
    kind = "pairs" if args.labels else "classes"
    reject = parse_reject(args.reject_below, kind)
    for flag, used in (("--augment", args.augment), ("--mpp", args.mpp is not None)):
        if used and kind == "classes":
            raise UsageError(f"{flag} applies to masks (--labels), not to --prompts.")
    # every input is read and checked before anything is written or loaded
    if kind == "pairs":
        plan = plan_pairs(
            args.labels, count=args.count, seed=args.seed, tile_px=args.tile_px, mpp=args.mpp, augment=args.augment
        )
    else:
        plan = plan_classes(args.prompts, count=args.count, seed=args.seed, size=args.size)
    description = ModelDescription.open(args.model, allow_pickle=args.allow_pickle)
    prompt = args.prompt if args.prompt is not None else (description.card.prompt or CRAFTS_MASK_PROMPT)
    settings = settings_of(args, *SYNTH_SETTINGS[1:], prompt=prompt)
    if kind == "pairs":
        from ..generation.region import check_scale

        check_scale(args.labels, float(plan.made_from["mpp"]), description.mpp)
    watermark: bool | str = "--no-watermark" if args.no_watermark else True
    distributed = args.workers is not None or args.scheduler_address is not None
    from ..model.threads import default_threads

    threads = args.threads_per_worker if distributed else default_threads()
    model_path = Path(resolve(args.model)).expanduser()
    state = dataset_state(
        plan,
        settings,
        str(model_path.resolve()) if model_path.exists() else str(args.model),
        reject_below=reject,
        watermark=watermark,
        tissue=args.tissue,
        threads=threads,
    )
    inputs = [*plan.inputs, model_path if model_path.exists() else None]
    out = check_dataset_output(args.out, state, inputs=inputs, overwrite=args.overwrite, resume=args.resume)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"synth: {plural(len(plan.items), 'image')} planned ({kind}); model: {args.model} (loading…)",
        file=sys.stderr,
        flush=True,
    )
    from .._generators import run
    from ..model.engine import check_device

    if args.device and not args.scheduler_address:  # the workers would run here: refuse now
        check_device(args.device)
    if distributed:
        from ..synth.run import synthesize_distributed
        from ..wsi.job import _connect

        created = start_dataset(out, state, overwrite=args.overwrite, resume=args.resume)
        with _connect(args.scheduler_address, args.workers or 1, lambda text: print(text, file=sys.stderr)) as client:
            meter = Meter()  # from here: the cluster and its workers are up
            result = run(
                synthesize_distributed(
                    client,
                    args.model,
                    plan,
                    out,
                    settings,
                    created=created,
                    reject_below=reject,
                    watermark=watermark,
                    tissue=args.tissue,
                    device=args.device,
                    threads=threads,
                    allow_pickle=args.allow_pickle,
                ),
                meter.report,
            )
    else:
        from ..model.engine import get_engine

        engine = get_engine(args.model, device=args.device, allow_pickle=args.allow_pickle)
        created = start_dataset(out, state, overwrite=args.overwrite, resume=args.resume)
        meter = Meter()
        gen = synthesize(
            engine, plan, out, settings, created=created, reject_below=reject, watermark=watermark, tissue=args.tissue
        )
        result = run(gen, meter.report)
    card = result.card
    counts = card["counts"]
    print(
        f"synthetic dataset: {out} ({counts['kept']} of {counts['planned']} images kept"
        + (f"; {counts['rejected']} rejected or not generated, listed in dataset.json" if counts["rejected"] else "")
        + (f"; {result.resumed} from the earlier run" if result.resumed else "")
        + ")"
    )
    if meter.made:
        print(f"throughput: {meter.made / meter.busy:.2f} images/s over the {plural(meter.made, 'image')} made now")
    div = card["diversity"]["mean"]
    if div is not None:
        print(
            f"diversity: mean pairwise SSIM {div:.3f} within {card['diversity']['groups']} (1 = identical "
            "images; see dataset.json)"
        )
    print(f"check the images with: napari-crafts check {out / 'images'}")
    return 0


class Meter:
    """Progress and time left on stderr, once per image (at most one line a second, and the last)."""

    def __init__(self) -> None:
        self.made, self.shown = 0, 0.0
        self.start = self.last = time.perf_counter()

    @property
    def busy(self) -> float:
        """Seconds from the start of generation to the last image (wall clock: workers make images at once)."""
        return self.last - self.start

    def report(self, event: Any) -> None:
        from ..generation.progress import format_duration
        from ..synth.run import ItemDone

        if not isinstance(event, ItemDone):
            return
        self.made += not event.resumed
        now = self.last = time.perf_counter()
        if now - self.shown < 1.0 and event.done < event.total:
            return
        self.shown = now
        rate = self.made / self.busy if self.made else None
        left = f" · about {format_duration((event.total - event.done) / rate)} left" if rate else ""
        speed = f" · {rate:.2f} images/s" if rate else ""
        print(f"synth: {event.done}/{event.total} images{speed}{left}", file=sys.stderr, flush=True)
