"""Make a planned dataset: generate each image, check it, write it, and pick up where a killed run stopped.

:func:`synthesize` is a Qt-free generator over one engine: it yields the ``Progress`` events of every diffusion
step (so a caller can stop within a step) and an :class:`ItemDone` per image, and returns a :class:`SynthResult`.
Each image is one ``generation.region.generate_region`` call (its provenance record and watermark included); its
``created`` time is the dataset's, so a resumed run writes the same bytes as an uninterrupted one.

The dataset folder (see ``card.CONTENTS``) is an output of ours, claimed by the output rule of
``export.safety``. What is finished is known from ``_synth/items/<id>.json``, written last for each image (after
its mask and PNG), so a run killed at any point resumes with ``resume=True``: finished images are kept as they
are, unfinished ones are made again from the same seed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_file
from ..generation.region import GenerationError, GenerationSettings, Region, generate_region
from ..generation.sources import LabelsSource
from .card import CONTENTS, ITEMS, STATE, finish_dataset, write_json
from .plan import Item, SynthError, SynthPlan, read_mask

#: H&E look checks ``--reject-below`` may name (``evaluation.metrics.he_checks``).
CHECKS = ("H_ratio", "red_gt_green")
#: zlib level of the dataset PNGs: 1 writes a 256² tile in ~6 ms instead of ~17 ms (level 6), 4 % larger.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class ItemDone:
    """Image ``done`` of ``total`` is finished (``kept``, or rejected with ``reason``); ``resumed``: from before."""

    done: int
    total: int
    item: Item
    kept: bool
    reason: str | None = None
    resumed: bool = False
    seconds: float = 0.0


@dataclass
class SynthResult:
    out: Path
    kept: int
    rejected: int
    resumed: int
    card: dict[str, Any]


def dataset_state(
    plan: SynthPlan,
    settings: GenerationSettings,
    model: str,
    *,
    reject_below: dict[str, float],
    watermark: bool | str,
    tissue: str,
    threads: int | None = None,
) -> dict[str, Any]:
    """What a run is asked to make; ``--resume`` goes on only when it is the same.

    ``threads``: torch threads per image (CPU pixels depend on it by a grey level here and there).
    """
    return {
        "plan": plan.record(),
        "settings": settings.record(),
        "model": model,
        "reject_below": reject_below,
        "watermark": watermark,
        "tissue": tissue,
        "torch_threads": threads,
    }


def created_time() -> str:
    """Now, or ``SOURCE_DATE_EPOCH`` (the reproducible-builds convention) when set: the images' ``created``."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        if epoch and epoch.isdigit()
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return when.isoformat(timespec="seconds")


def check_dataset_output(
    out: str | os.PathLike[str],
    state: dict[str, Any],
    *,
    inputs: Iterable[str | Path | None],
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """The output rule for a dataset folder (nothing is written): never in an input, ``overwrite`` only ours.

    With ``resume`` an earlier run of the same plan and settings is continued; anything else there is refused.
    """
    from ..export.safety import check_output

    target = check_output(
        out, kind="folder", inputs=inputs, overwrite=overwrite, resume=resume, advice="pass --resume to continue it"
    )
    if resume and target.exists():
        before = _read(target / STATE / "state.json")
        if before is None:
            raise SynthError(
                f"{target} is not a synth dataset (no {STATE}/state.json): nothing to resume; choose another folder."
            )
        differs = [
            k for k in state if json.dumps(before.get(k), sort_keys=True) != json.dumps(state[k], sort_keys=True)
        ]
        if differs:
            raise SynthError(
                f"{target} was started with other {', '.join(differs)}: resume with the same command, "
                "or use --overwrite to start again."
            )
    return target


def start_dataset(out: Path, state: dict[str, Any], *, overwrite: bool = False, resume: bool = False) -> str:
    """Claim ``out`` (after :func:`check_dataset_output`) and write the run's state; returns its ``created``."""
    from ..export.safety import claim_folder

    if resume and (before := _read(out / STATE / "state.json")) is not None:
        return str(before["created"])
    claim_folder(out, "synthetic dataset (napari-crafts synth)", CONTENTS)  # with --overwrite: only ours, replaced
    created = created_time()
    write_json(out / STATE / "state.json", {**state, "created": created})
    return created


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished(out: Path, item: Item) -> dict[str, Any] | None:
    """The record of an image a run already finished (None: make it), checking its files are there."""
    record = _read(out / ITEMS / f"{item.id}.json")
    if record is None:
        return None
    if record.get("kept") and not all((out / name).is_file() for name in (item.file_name, item.mask_name) if name):
        return None
    return record


def synthesize(
    engine: Any,
    plan: SynthPlan,
    out: str | os.PathLike[str],
    settings: GenerationSettings,
    *,
    created: str,
    reject_below: dict[str, float] | None = None,
    watermark: bool | str = True,
    tissue: str = "auto",
) -> Generator[Any, None, SynthResult]:
    """Make every image of ``plan`` in the claimed dataset folder ``out`` (see :func:`start_dataset`)."""
    out = Path(out)
    (out / ITEMS).mkdir(parents=True, exist_ok=True)
    reject_below = dict(reject_below or {})
    kept = rejected = resumed = 0
    total = len(plan.items)
    for n, item in enumerate(plan.items, 1):
        record = finished(out, item)
        if record is not None:
            resumed += 1
            kept, rejected = kept + bool(record["kept"]), rejected + (not record["kept"])
            yield ItemDone(n, total, item, bool(record["kept"]), record.get("reason"), resumed=True)
            continue
        start = time.perf_counter()
        record = yield from _make(
            engine,
            item,
            out,
            settings,
            size=plan.size,
            created=created,
            reject_below=reject_below,
            watermark=watermark,
            tissue=tissue,
        )
        write_json(out / ITEMS / f"{item.id}.json", record)  # last: the image is finished
        kept, rejected = kept + bool(record["kept"]), rejected + (not record["kept"])
        yield ItemDone(n, total, item, bool(record["kept"]), record.get("reason"), seconds=time.perf_counter() - start)
    model = engine.describe(settings.controlnet, model_mode(plan))
    card = finish_dataset(out, plan, model, settings, created=created, reject_below=reject_below, watermark=watermark)
    return SynthResult(out, kept, rejected, resumed, card)


def model_mode(plan: SynthPlan) -> str | None:
    """The engine mode of a plan's images: labels for pairs, None (prompt only, no ControlNet) for classes."""
    return "labels" if plan.kind == "pairs" else None


def synthesize_distributed(
    client: Any,
    model: str,
    plan: SynthPlan,
    out: str | os.PathLike[str],
    settings: GenerationSettings,
    *,
    created: str,
    reject_below: dict[str, float] | None = None,
    watermark: bool | str = True,
    tissue: str = "auto",
    device: str | None = None,
    threads: int = 1,
    allow_pickle: bool = False,
) -> Generator[ItemDone, None, SynthResult]:
    """:func:`synthesize` on a dask.distributed ``client``: one task per image, the model loaded once per worker
    (``model`` is what ``get_engine`` takes), each computing with ``threads`` torch threads. Images finish in any
    order; ``ItemDone.done`` counts them."""
    from distributed import as_completed

    out = Path(out)
    (out / ITEMS).mkdir(parents=True, exist_ok=True)
    reject_below = dict(reject_below or {})
    kept = rejected = resumed = 0
    total = len(plan.items)
    todo = []
    for item in plan.items:
        record = finished(out, item)
        if record is None:
            todo.append(item)
            continue
        resumed += 1
        kept, rejected = kept + bool(record["kept"]), rejected + (not record["kept"])
        yield ItemDone(resumed, total, item, bool(record["kept"]), record.get("reason"), resumed=True)
    options = {
        "size": plan.size,
        "settings": settings,
        "created": created,
        "reject_below": reject_below,
        "watermark": watermark,
        "tissue": tissue,
    }
    futures = {
        client.submit(_item_task, model, device, threads, allow_pickle, item, str(out), pure=False, **options): item
        for item in todo
    }
    described: dict[str, Any] | None = None
    done = resumed
    try:
        for future in as_completed(futures):
            item = futures[future]
            record, seconds, described = future.result()
            done += 1
            kept, rejected = kept + bool(record["kept"]), rejected + (not record["kept"])
            yield ItemDone(done, total, item, bool(record["kept"]), record.get("reason"), seconds=seconds)
    finally:
        client.cancel(list(futures))  # stopped early (Ctrl-C, an error): no image is left running
    if described is None:  # every image was made before: the card still names the model, as a worker loads it
        described = client.submit(
            _describe_task, model, device, allow_pickle, settings.controlnet, model_mode(plan), pure=False
        ).result()
    card = finish_dataset(
        out, plan, described, settings, created=created, reject_below=reject_below, watermark=watermark
    )
    return SynthResult(out, kept, rejected, resumed, card)


def _item_task(
    model: str,
    device: str | None,
    threads: int,
    allow_pickle: bool,
    item: Item,
    out: str,
    *,
    size: int,
    settings: GenerationSettings,
    **options: Any,
) -> tuple[dict[str, Any], float, dict[str, Any]]:
    """One image on a worker: (its record, seconds, the model's description); the record is written last."""
    from .._generators import run
    from ..model.engine import get_engine
    from ..model.threads import torch_threads

    engine = get_engine(model, device=device, allow_pickle=allow_pickle)  # cached: loaded once per worker
    start = time.perf_counter()
    with torch_threads(threads):
        record = run(_make(engine, item, Path(out), settings, size=size, **options))
    write_json(Path(out) / ITEMS / f"{item.id}.json", record)
    mode = "labels" if item.mask is not None else None
    return record, time.perf_counter() - start, engine.describe(settings.controlnet, mode)


def _describe_task(
    model: str, device: str | None, allow_pickle: bool, controlnet: str | None, mode: str | None
) -> dict[str, Any]:
    from ..model.engine import get_engine

    description: dict[str, Any] = get_engine(model, device=device, allow_pickle=allow_pickle).describe(controlnet, mode)
    return description


def _make(
    engine: Any,
    item: Item,
    out: Path,
    settings: GenerationSettings,
    *,
    size: int,
    created: str,
    reject_below: dict[str, float],
    watermark: bool | str,
    tissue: str,
) -> Generator[Any, None, dict[str, Any]]:
    """Generate, check and write one image; its record (what ``metadata.jsonl`` says of it)."""
    from ..evaluation.metrics import he_checks
    from ..export.png import save_png

    labels = read_mask(item) if item.mask is not None else None
    s = dataclasses.replace(settings, seed=item.seed, prompt=item.prompt or settings.prompt)
    record: dict[str, Any] = {
        "id": item.id,
        "file_name": item.file_name,
        "class": item.cls,
        "prompt": s.prompt,
        "seed": item.seed,
    }
    if labels is not None and item.mask is not None:
        y, x, h, w = item.mask.box
        record.update(
            {
                "mask_file_name": item.mask_name,
                "mpp": item.mask.mpp,
                "augment": list(item.augment),
                "mask_source": {"path": item.mask.path, "y": y, "x": x, "height": h, "width": w},
                "nuclei": int(len(np.unique(labels)) - (labels == 0).any()),
            }
        )
        source = LabelsSource(labels, name=f"{item.id} (mask {item.mask_name})", mpp=item.mask.mpp, tissue=tissue)
        region = Region(0, 0, *labels.shape)
    else:
        source, region = None, Region(0, 0, size, size)
    try:
        result = yield from generate_region(engine, source, region, s, watermark=watermark)
    except GenerationError as err:  # e.g. no tissue in this tile: the dataset goes on without it
        return {**record, "kept": False, "reason": f"not generated: {err}"}
    result.provenance["created"] = created  # outside the watermark's hash: the dataset's time, for every image
    checks = {k: _finite(v) for k, v in he_checks(result.rgb, labels > 0 if labels is not None else None).items()}
    record.update({"checks": checks, "notes": result.notes})
    failed = [
        f"{k} {_shown(checks.get(k))} < {v:g}"
        for k, v in reject_below.items()
        if not ((found := checks.get(k)) is not None and found >= v)
    ]
    if failed:
        return {**record, "kept": False, "reason": "rejected: " + ", ".join(failed)}
    if labels is not None and item.mask_name is not None:
        _save_mask(out / item.mask_name, labels, item.mask.mpp if item.mask else None)
    png = out / item.file_name
    png.parent.mkdir(parents=True, exist_ok=True)
    mpp = source.mpp if source is not None else engine.mpp
    save_png(png, result.rgb, result.provenance, mpp=mpp, compress_level=PNG_COMPRESS_LEVEL)
    return {**record, "kept": True}


def _finite(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _save_mask(path: Path, labels: np.ndarray, mpp: float | None) -> None:
    """The instance labels as a TIFF (uint16, or uint32 beyond 65,535 nuclei), written beside and renamed."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if int(labels.max()) < 2**16 else np.uint32
    resolution = (1e4 / mpp, 1e4 / mpp) if mpp else None
    with atomic_file(path) as partial:
        tifffile.imwrite(
            partial,
            labels.astype(dtype),
            photometric="minisblack",
            metadata=None,
            software="napari-crafts synth",
            resolution=resolution,
            resolutionunit="CENTIMETER" if mpp else None,
        )
