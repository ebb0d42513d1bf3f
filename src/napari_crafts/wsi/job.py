"""Whole-slide generation, headless: a labels or fluorescence slide → pyramidal OME-Zarr on dask.distributed.

``generate_slide`` renders level 0 of a slide with the same tiling, seeds and blending as ``generate_region``
(the in-memory path behind the widgets) — level 0 is byte-identical to its result for the same settings, up to
the watermark, whose payload is the hash of each output's own record (see ``docs/watermark.md``) — but
never holds the slide in memory and spreads the work over dask.distributed workers:

0. scan:    which tiles are empty (tasks over rows of tiles; the answer is cached in the tile store);
1. render:  one task per batch of non-empty tiles → a private tile store inside the output (one zarr chunk
            per tile, a done marker after each); empty tiles are never sent to the model;
2. blend:   one task per level-0 output chunk: the tiles touching it, blended by ``blend_window`` in the order
            ``generate_region`` adds them (``blend_order``), so every pixel sees the same float operations, then
            watermarked (``export.watermark``: a pure function of the chunk, its origin and the record's payload);
3. pyramid: one task per chunk of each reduced level (``OmeZarrWriter.build_level``);
then the image is flagged complete, the tile store deleted and, if asked, a pyramidal OME-TIFF written.

Every task checks its done marker first and returns at once when it is set, so resuming is rerunning with
``resume=True``: only missing work is submitted and the result is byte-identical to an uninterrupted run.
Batches of tiles are fixed by the grid (not by what is left to do), and every worker uses the same number
of torch threads, so the pixels do not depend on the number of workers or on interruptions.

The source is opened by ``wsi.source_file`` (slides, OME-Zarr, GeoJSON nuclei); the command line is
``cli.generate``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from .._files import atomic_file
from .._plural import plural
from ..export import PROGRESS_GROUP, OmeZarrWriter, create_ome_zarr, is_complete, ome_zarr_to_tiff
from ..export.safety import (
    EMPTY_MASK,
    TILE_STORE,
    OutputExists,
    check_output,
    is_disk_full,
    remove_output,
    remove_private,
)
from ..export.watermark import CELL, PERIOD, Payload, embed_watermark, sign_record
from ..generation.job import ModelChoice
from ..generation.region import (
    BatchProgress,
    GenerationError,
    GenerationSettings,
    Plan,
    Region,
    attach_tissue,
    no_tissue_message,
    plan_region,
    region_notes,
    region_provenance,
    render_tiles_adaptive,
    run,
)
from ..generation.tiling import TileGrid, blend_order, blend_window
from ..generation.tissue import check_spec, is_choice
from ..io.slide import clear_cache
from ..model.description import ModelDescription, Runtime
from ..model.engine import get_engine, pick_device
from ..model.threads import torch_threads
from .scan import scan_empty
from .source_file import SlideArray, open_source  # noqa: F401  (SlideArray: part of this module's API)


class Cancelled(GenerationError):
    """The run was stopped on request; what finished is kept (resume to continue)."""


class DiskFull(GenerationError):
    """The disk filled up while writing; what finished is kept (free space and resume)."""


def background_job(source_path: str | Path, output: str | Path, model: ModelChoice, settings: GenerationSettings,
                   options: SlideOptions) -> Generator[BatchProgress, None, Path]:
    """``generate_slide`` in a thread, as a generator of BatchProgress that returns the output path.

    Closing the generator (napari's Cancel) stops the run at its next finished task; it can be resumed.
    """
    import queue

    events: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            events.put(("done", generate_slide(source_path, output, model, settings, options, progress=False,
                                               cancel=stop, on_progress=lambda *a: events.put(("progress", a)))))
        except BaseException as exc:  # noqa: BLE001 -- not swallowed: re-raised in the caller's thread
            events.put(("error", exc))

    threading.Thread(target=run, name="napari-crafts batch", daemon=True).start()
    try:
        while True:
            kind, value = events.get()
            if kind == "done":
                return value
            if kind == "error":
                raise value
            yield BatchProgress(*value)
    finally:
        stop.set()


# --------------------------------------------------------------------------------------------- model


def common_runtime(runtimes: list[Runtime]) -> Runtime:
    """The runtime a run's provenance records: the workers' (all alike but for the GPU index, which is dropped
    when they differ). Workers that compute differently (CPU and GPU, fp16 and fp32) are refused: a tile's
    pixels would depend on which worker made it."""
    if not runtimes:
        raise GenerationError("No dask worker answered: start workers for the scheduler, or leave out "
                              "--scheduler-address to use a local cluster.")
    kinds = sorted({_kind(r) for r in runtimes}, key=repr)
    if len(kinds) > 1:
        seen = ", ".join(f"{r.device}/{r.dtype}" for r in kinds)
        raise GenerationError(f"The workers run the model differently ({seen}): a tile's pixels would depend on "
                              "which worker made it. Give every worker the same device type and dtype.")
    return runtimes[0] if all(r == runtimes[0] for r in runtimes) else kinds[0]


def _kind(runtime: Runtime) -> Runtime:
    """The runtime without a GPU index ("cuda:1" → "cuda"): what decides the pixels."""
    return replace(runtime, device=runtime.device.partition(":")[0])


# --------------------------------------------------------------------------------------------- workers

AUTO_TASK_TILES = 8  # tiles per render task when the batch size is auto
#: Chunks that hold only glass (every tile touching them is glass, or every chunk below them is such a chunk) are
#: written this many per task: a 200,000² slide that is mostly glass has ~200,000 of them, and one task each
#: costs hours of scheduling alone (10-20 tasks/s).
GLASS_CHUNKS_PER_TASK = 1024
WORKER_WAIT_S = 300  # how long a run waits for the first worker of a remote scheduler
CONNECT_TIMEOUT_S = 10  # how long a run waits for a remote scheduler to answer
_WORKER: dict[str, Any] = {}  # per worker process: the device the plugin chose


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker (on its own GPU when a local cluster has several).

    torch's thread count is per thread, so every render task pins it (``model.threads``) in the thread it runs in.
    """

    name = "napari-crafts-model"

    def __init__(self, model: str, device: str | None, threads: int, stores: tuple[str, ...],
                 allow_pickle: bool = False, options: dict[str, Any] | None = None) -> None:
        self.model, self.device, self.threads, self.stores = model, device, threads, stores
        self.allow_pickle = allow_pickle
        self.options = options or {}  # Engine.options: channels_last, compile

    async def setup(self, worker: Any) -> None:
        from .. import export

        for store in self.stores:  # a long-lived cluster may hold stores of an earlier run at the same path
            export.forget_cached(store)
        clear_cache()
        _WORKER["device"] = _worker_device(self.device, worker.name)
        _WORKER["allow_pickle"] = self.allow_pickle
        _WORKER["options"] = self.options
        await asyncio.to_thread(_engine, self.model, self.device, self.threads)  # keep the event loop free


def _worker_device(device: str | None, worker_name: Any) -> str | None:
    """The device given, else one GPU per local worker when there are several, else the engine's choice."""
    if device is not None:
        return device
    import torch

    n = torch.cuda.device_count()
    return f"cuda:{int(worker_name) % n}" if n > 1 and str(worker_name).isdigit() else None


def _engine(model: str, device: str | None, threads: int) -> Any:
    """This worker's cached engine (generation pins ``threads`` torch threads: see ``_render_task``)."""
    return get_engine(model, device=_WORKER.get("device", device), allow_pickle=_WORKER.get("allow_pickle", False),
                      **_WORKER.get("options", {}))


def _worker_runtime(model: str, device: str | None, threads: int) -> Runtime:
    """Where this worker's engine runs (asked by the client through ``client.run``)."""
    return _engine(model, device, threads).runtime


def _render_task(model: str, device: str | None, threads: int, runtime: Runtime, source: Any, plan: Plan,
                 settings: GenerationSettings, store: OmeZarrWriter, cells: list[tuple[int, int]]) -> int:
    """Render one batch of tiles into the tile store (whole batch, so its composition never changes).

    ``runtime`` is what the image's provenance records; a worker that computes otherwise refuses.
    """
    todo = {rc for rc in cells if not store.chunk_done(0, *rc)}
    if not todo:
        return 0
    engine = _engine(model, device, threads)
    if _kind(engine.runtime) != _kind(runtime):
        mine, wanted = engine.runtime, runtime
        raise GenerationError(f"This worker runs the model on {mine.device}/{mine.dtype}, but the image's tiles "
                              f"are made on {wanted.device}/{wanted.dtype} (its provenance says so): give every "
                              "worker the same device type and dtype.")
    tiles = [plan.grid.at(r, c) for r, c in cells]
    with torch_threads(threads):  # every worker computes with the same count, in whatever thread it runs
        images = run(render_tiles_adaptive(engine, source, plan, tiles, settings, on_step=lambda step: step))
    for rc, image in zip(cells, images, strict=True):
        if rc in todo:  # never rewrite a tile already marked done (a kill mid-write would leave it marked)
            store.write_chunk(0, *rc, image)
    return len(todo)


def _blend_task(writer: OmeZarrWriter, store: OmeZarrWriter, grid: TileGrid, glass: tuple[int, int, int],
                payload: Payload | None, cy: int, cx: int, touching: list[tuple[int, int, bool]],
                rendered: list[Any]) -> int:
    """Blend the tiles touching level-0 chunk (cy, cx) as generate_region does (``blend_window`` in
    ``blend_order``), watermark it (unless ``payload`` is None) and write it.

    ``touching`` lists (row, col, empty) in grid order; ``rendered`` holds the results of the render tasks
    this one waited for (unused: the tiles are read from the store). The mark goes on the final, blended chunk
    (never on model tiles) and depends only on its pixels, origin and payload: a resumed run writes the same bytes.
    """
    if writer.chunk_done(0, cy, cx):
        return 0
    y0, x0, y1, x1 = writer.chunk_box(0, cy, cx)
    background = np.broadcast_to(np.array(glass, np.uint8), (grid.tile, grid.tile, 3))
    tiles = [grid.at(r, c) for r, c, _ in touching]
    empty = {grid.at(r, c) for r, c, is_empty in touching if is_empty}

    def image_of(tile: Any) -> np.ndarray:
        if tile in empty:
            return background
        if store.chunk_done(0, tile.row, tile.col):
            return store.read_region(0, *store.chunk_box(0, tile.row, tile.col))
        raise RuntimeError(f"Tile ({tile.row}, {tile.col}) is missing from {store.path}; rerun with --resume.")

    rgb = blend_window(grid, (y0, x0, y1, x1), blend_order(tiles, empty), image_of)
    if payload is not None:
        rgb = embed_watermark(rgb, payload, origin=(y0, x0))
    writer.write_chunk(0, cy, cx, rgb)
    return 1


def _pyramid_task(writer: OmeZarrWriter, level: int, cy: int, cx: int, below: list[Any]) -> int:
    """Build chunk (cy, cx) of ``level`` once the tasks writing the chunks ``below`` it are done."""
    if writer.chunk_done(level, cy, cx):
        return 0
    writer.build_level(level, cy, cx)
    return 1


def _glass_task(writer: OmeZarrWriter, glass: tuple[int, int, int], payload: Payload | None, level: int,
                cells: list[tuple[int, int]], classes: list[Any], below: list[Any]) -> int:
    """Write chunks ``cells`` of ``level`` that hold nothing but glass, in one task (see ``GLASS_CHUNKS_PER_TASK``).

    Chunks of one class (``classes``: same size, watermark phase and, above level 0, classes below) have the same
    bytes, so each class is computed once, as ``_blend_task`` / ``_pyramid_task`` would, and copied: a level-0
    glass chunk is the glass colour (every tile touching it is glass, and blending one colour gives that colour),
    then watermarked; a reduced chunk is built from the chunks below it.
    """
    made: dict[Any, np.ndarray] = {}
    written = 0
    for (cy, cx), key in zip(cells, classes, strict=True):
        if writer.chunk_done(level, cy, cx):
            continue
        if key in made:
            writer.write_chunk(level, cy, cx, made[key])
        elif level == 0:
            y0, x0, y1, x1 = writer.chunk_box(0, cy, cx)
            rgb = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            rgb[...] = glass
            made[key] = embed_watermark(rgb, payload, origin=(y0, x0)) if payload is not None else rgb
            writer.write_chunk(0, cy, cx, made[key])
        else:
            writer.build_level(level, cy, cx)
            made[key] = writer.read_region(level, *writer.chunk_box(level, cy, cx))
        written += 1
    return written


def _glass_classes(writer: OmeZarrWriter, glass0: np.ndarray, marked: bool) -> list[np.ndarray]:
    """Per level, an object array: for a chunk that holds only glass, a key equal for chunks of equal bytes (see
    ``_glass_task``); None for the others. Level 0 from ``glass0`` (chunks only glass tiles touch)."""
    period = PERIOD * CELL  # the watermark's pattern repeats every ``period`` px
    ids: dict[Any, int] = {}  # class → a small number (a reduced chunk's class names the classes below it)
    classes: list[np.ndarray] = []
    for level in range(writer.levels):
        ny, nx = writer.grid(level)
        keys = np.full((ny, nx), None, dtype=object)
        for cy, cx in zip(*np.nonzero(glass0 if level == 0 else _all_below(classes[-1], ny, nx)), strict=True):
            y0, x0, y1, x1 = writer.chunk_box(level, int(cy), int(cx))
            if level == 0:
                key: Any = (y1 - y0, x1 - x0) + ((y0 % period, x0 % period) if marked else ())
            else:
                key = (level, y1 - y0, x1 - x0, tuple(classes[-1][2 * cy : 2 * cy + 2, 2 * cx : 2 * cx + 2].ravel()))
            keys[cy, cx] = ids.setdefault(key, len(ids))
        classes.append(keys)
    return classes


def _all_below(below: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """(ny, nx) True where every chunk of the level below (2×2, fewer at the edges) has a glass class."""
    out = np.zeros((ny, nx), dtype=bool)
    for cy in range(ny):
        for cx in range(nx):
            out[cy, cx] = all(k is not None for k in below[2 * cy : 2 * cy + 2, 2 * cx : 2 * cx + 2].ravel())
    return out


# --------------------------------------------------------------------------------------------- the run


def default_workers(model: ModelDescription, device: str | None, threads_per_worker: int) -> int:
    """Workers of a local cluster (this machine): one per GPU (all GPUs when the device is left to us); on CPU
    as many as cores and memory allow."""
    import psutil
    import torch

    where = pick_device(device)
    if where.startswith("cuda"):
        return max(1, torch.cuda.device_count()) if device is None else 1
    if where != "cpu":
        return 1
    per_worker = 2 * model.weight_bytes + 2**30  # fp32 weights (often stored fp16) + working memory
    by_memory = int(0.8 * psutil.virtual_memory().available // per_worker)
    return max(1, min((os.cpu_count() or 1) // max(1, threads_per_worker), by_memory))


@contextmanager
def _connect(scheduler_address: str | None, n_workers: int, say: Any) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if scheduler_address:
        cluster, client = None, _remote_client(scheduler_address)
    else:
        import dask

        # One task at a time per worker: a task is a model batch that already uses the worker's torch threads
        # (or its GPU); two at once would oversubscribe the cores or double the GPU memory. The nanny's default
        # MALLOC_TRIM_THRESHOLD_=65536 makes torch on CPU ~2.5× slower (measured): leave glibc's default.
        # A failing task is reported once, by the client (the worker's "Compute Failed" block would repeat it).
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            # dashboard on a free port: the default 8787 is often taken on shared machines (a warning each run)
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   silence_logs=logging.CRITICAL, dashboard_address=":0")
        client = Client(cluster)
        client.register_plugin(_LeaveInterruptsToClient())
    try:
        try:
            import bokeh  # noqa: F401

            say(f"dask dashboard: {client.dashboard_link}")
        except ImportError:
            say("dask dashboard: unavailable (install bokeh to watch the workers)")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _remote_client(address: str) -> Any:
    """A client of the scheduler at ``address``; one clear error when it is not an address or does not answer."""
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S)
    except ValueError as err:  # distributed's address parser
        raise GenerationError(f"--scheduler-address {address!r} is not a scheduler address ({err}): give "
                              "host:port, e.g. tcp://10.0.0.5:8786.") from None
    except (OSError, TimeoutError):
        raise GenerationError(f"No dask scheduler answered at {address} within {CONNECT_TIMEOUT_S} s: start it "
                              "(dask scheduler) and its workers, or leave out --scheduler-address to use a local "
                              "cluster.") from None


class _LeaveInterruptsToClient(WorkerPlugin):
    """Workers of our local cluster ignore Ctrl-C: the terminal sends it to them too, and the client stops the
    run and closes the cluster (otherwise each worker prints its own KeyboardInterrupt traceback)."""

    name = "napari-crafts-interrupts"

    def setup(self, worker: Any) -> None:
        import signal

        if threading.current_thread() is threading.main_thread():  # a worker process (not an in-process one)
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(frozen=True)
class SlideOptions:
    """How a whole-slide run reads its source, where it runs and what it writes (``generate_slide``).

    Source: ``mpp`` overrides (or supplies) its pixel size, ``kind`` its kind ("labels" or "channels"),
    ``channels`` gives fluorescence channels their roles ("DAPI=nuclear,FITC=cytoplasm"; default: guessed),
    ``tissue`` ("auto", "all", a mask image or GeoJSON file, an array; ``generation.tissue``) where the tissue is.
    Workers: a local cluster of ``n_workers`` processes (default: one per GPU, else by cores and memory), or the
    dask scheduler at ``scheduler_address``; each uses ``threads_per_worker`` torch threads; ``channels_last`` and
    ``compile`` are their ``Engine`` options (speed, not maths). Output: ``chunk``-px OME-Zarr chunks; ``resume``
    continues an interrupted run (same settings, checked); ``overwrite`` replaces an earlier output of ours;
    ``tiff`` also writes a pyramidal OME-TIFF there; ``watermark`` True, or the name of the switch that turned it
    off (recorded).
    """

    mpp: float | None = None
    kind: str | None = None
    channels: str | None = None
    tissue: Any = "auto"
    scheduler_address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    channels_last: bool = False
    compile: bool = False
    chunk: int = 512
    resume: bool = False
    overwrite: bool = False
    tiff: Path | None = None
    watermark: bool | str = True


def generate_slide(source_path: str | Path, output: str | Path, model: ModelChoice | str | Path,
                   settings: GenerationSettings, options: SlideOptions = SlideOptions(), *, progress: bool = True,
                   on_progress: Callable[[str, int, int], None] | None = None,
                   cancel: threading.Event | None = None) -> Path:
    """Generate synthetic H&E for the whole of level 0 of ``source_path`` into a pyramidal OME-Zarr ``output``.

    ``model``: the run layer's ``ModelChoice`` (or a folder / id): every worker loads it once (with its LoRA);
    ``settings.scheduler`` "lcm" runs the model's few-step student (checked here, before any worker starts).
    ``options``: the source, the workers and the output (``SlideOptions``). ``on_progress(what, done, total)``
    hears of finished "tiles" and "chunks"; setting ``cancel`` stops the run at the next finished task (raising
    ``Cancelled``; resume later with ``resume=True``). Every level-0 chunk is watermarked after blending (the
    pyramid is built from marked level 0) unless ``options.watermark`` says it was turned off. Tiles without
    tissue are glass, every tile with tissue is generated, glass is composited around it.
    """
    choice = model if isinstance(model, ModelChoice) else ModelChoice(str(model))
    model, device, allow_pickle, lora = choice.model, choice.device, choice.allow_pickle, choice.lora
    mpp, kind, channels, tissue = options.mpp, options.kind, options.channels, options.tissue
    scheduler_address, n_workers, threads_per_worker = (options.scheduler_address, options.n_workers,
                                                         options.threads_per_worker)
    chunk, resume, overwrite, tiff, watermark = (options.chunk, options.resume, options.overwrite, options.tiff,
                                                 options.watermark)
    say = print if progress else (lambda *args, **kwargs: None)
    out = Path(output).expanduser().absolute()
    if threads_per_worker < 1:
        raise ValueError(f"--threads-per-worker must be at least 1, got {threads_per_worker}.")
    if watermark is True and chunk % CELL:
        raise ValueError(f"--chunk {chunk}: the watermark needs chunks on its {CELL}-px cell grid: use a multiple "
                         f"of {CELL} (e.g. {chunk // CELL * CELL or CELL}).")
    # 0. The output rule (export.safety), before anything starts: never over an input, replace only our own.
    check_spec(tissue)  # a missing mask file: one line before anything starts
    given = [] if is_choice(tissue) or not isinstance(tissue, (str, Path)) else [tissue]
    inputs = [source_path] + [p for p in (model, settings.controlnet, lora, *given)
                              if p and Path(p).expanduser().exists()]
    check_output(out, kind="ome-zarr", inputs=inputs, overwrite=overwrite, resume=resume, advice="pass --resume to "
                 "continue it")
    if tiff is not None:
        if resume and os.path.lexists(tiff):  # refused now, not after the whole run
            raise OutputExists(f"--tiff {tiff} already exists: remove it or choose another --tiff path.")
        check_output(tiff, kind="ome-tiff", inputs=[*inputs, out], overwrite=overwrite, flag="--tiff")
    # 1. Open the source and describe the model: small files only, no network (errors here cost seconds).
    source = open_source(source_path, mpp=mpp, kind=kind, channels=channels, tissue=tissue)
    description = ModelDescription.open(model, allow_pickle=allow_pickle, lora=lora)
    if settings.scheduler == "lcm":
        description.check_few_step()  # a student (declared, of these weights) or --lora: now, not in each worker
    plan = plan_region(source, Region(0, 0, *source.shape), description, settings)
    if not is_choice(source.tissue):  # a mask file: read (and checked) now, shipped to the workers as a mask
        plan = attach_tissue(plan, source)
        source.tissue = plan.tissue
    creates = not (resume and os.path.lexists(out))
    made = False  # this run created the store: a failure before any tile removes it (and only it)

    def open_output(runtime: Runtime) -> tuple[OmeZarrWriter, dict[str, Any], Payload | None]:
        """Create the output, or reopen it after export has checked it was made with these settings; the
        watermark's payload (None: turned off) comes from the record as it is stored."""
        nonlocal made
        provenance = _provenance(source, plan, description, runtime, settings, threads_per_worker,
                                 mpp_given=mpp is not None)
        payload = sign_record(provenance, watermark)  # a resume must store (and check) the same entry
        writer = create_ome_zarr(out, source.shape, mpp=source.mpp, provenance=provenance, chunk=chunk,
                                 resume=resume, overwrite=overwrite)
        made = creates
        grid = plan.grid
        say(f"{out}: {grid.height}×{grid.width} px at {source.mpp} µm/px from {source.name} "
            f"({_read_as(source, kind)}); {plural(len(grid), 'tile')} of {grid.tile} px (model {plan.model_tile} "
            f"px), overlap {grid.overlap} px; {plural(writer.levels, 'level')} of {chunk}-px chunks")
        for note in provenance["notes"]:
            say(f"note: {note}")
        return writer, provenance, payload

    try:
        # 2. A finished store: nothing to render; check the settings and start no cluster.
        if resume and os.path.isdir(out) and is_complete(out):
            plan = attach_tissue(plan, source)  # the record names the tissue extent: the same rule, read here
            open_output(_recorded_runtime(out))
            say(f"{out} is already complete.")
        else:  # 2. the workers load the model; the record names their device and dtype, where tiles are made
            workers = n_workers or default_workers(description, device, threads_per_worker)
            engine_options: dict[str, Any] = {"channels_last": options.channels_last, "compile": options.compile}
            if lora is not None:  # the workers load it too (get_engine's lora)
                engine_options["lora"] = str(Path(lora).expanduser().absolute())
            engine_args = (str(description.path), device, threads_per_worker)
            with _connect(scheduler_address, workers, say) as client:
                stores = (str(out), str(out / TILE_STORE))
                client.register_plugin(ModelPlugin(*engine_args[:2], threads_per_worker, stores, allow_pickle,
                                                   engine_options))
                runtime = _workers_runtime(client, *engine_args)
                # the tissue extent, read on the workers (an auto mask reads level 0 once, like the scan)
                plan = attach_tissue(plan, source, partial(run_tasks, client, uuid.uuid4().hex[:8], progress))
                writer, provenance, payload = open_output(runtime)
                # 3. Run whatever is not done on the workers, then flag the image complete.
                job = _Job(client, writer, source, plan, settings, engine_args, runtime, provenance, payload, say,
                           progress)
                job.submit_level0()
                job.submit_pyramid()
                job.wait(progress, on_progress, cancel)
            writer.finish()
        remove_private(out, TILE_STORE)  # only what we wrote there
        # 4. Optionally copy to a pyramidal OME-TIFF.
        if tiff is not None:
            say(f"writing {tiff} …")
            ome_zarr_to_tiff(out, tiff, overwrite=overwrite)
    except Exception as err:
        if made and not isinstance(err, Cancelled) and not _holds_work(out):
            remove_output(out, kind="ome-zarr")  # nothing was generated: leave nothing behind
        if is_disk_full(err):
            raise DiskFull(f"disk full while writing {out}; free space and rerun with --resume.") from err
        raise
    return out


def _read_as(source: Any, kind: str | None) -> str:
    """How the source is read, for the header line; says so when one float channel was taken for fluorescence."""
    dtype = np.dtype(source.data.dtype)
    if kind is None and source.mode == "fluorescence" and source.n_channels == 1 and dtype.kind == "f":
        return f"fluorescence: one channel of {dtype} values; if it is a labels image, rerun with --kind labels"
    return source.mode


def _holds_work(out: Path) -> bool:
    """Whether a store holds a finished tile or chunk (then a failed run keeps it, for --resume)."""
    if not out.is_dir() or is_complete(out):
        return out.is_dir()
    for markers in (out / TILE_STORE / PROGRESS_GROUP / "0", out / PROGRESS_GROUP / "0"):
        for folder, _, files in os.walk(markers):
            if any(f.isdigit() and os.path.getsize(os.path.join(folder, f)) == 1 for f in files):
                return True
    return False


def _workers_runtime(client: Any, model: str, device: str | None, threads: int) -> Runtime:
    """The device and dtype the workers run the model with (``common_runtime`` of every worker's answer)."""
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise GenerationError(f"No dask worker joined the scheduler within {WORKER_WAIT_S} s: start workers for "
                              "it, or leave out --scheduler-address to use a local cluster.") from None
    return common_runtime(list(client.run(_worker_runtime, model, device, threads).values()))


def _recorded_runtime(out: Path) -> Runtime:
    """The runtime a finished store's provenance records (where its tiles were made)."""
    from ..export import read_provenance

    record = (read_provenance(out) or {}).get("model", {})
    return Runtime(str(record.get("device")), str(record.get("dtype")), bool(record.get("channels_last")),
                   bool(record.get("compile")))


def _provenance(source: Any, plan: Plan, model: ModelDescription, runtime: Runtime, settings: GenerationSettings,
                threads: int, *, mpp_given: bool) -> dict[str, Any]:
    """The record generate_region writes (with the workers' runtime), plus where the source file is; resuming
    must reproduce it."""
    extra = {"torch_threads_per_worker": threads} if runtime.device == "cpu" else {}
    # CPU pixels depend (in the last bit) on the thread count: a resume must keep it
    return region_provenance(
        model.at(runtime), source, plan, settings, region_notes(model, plan, settings), settings_extra=extra,
        source_extra={"path": source.data.path, "level": 0, "mpp_from": "--mpp" if mpp_given else "file"},
    )


@dataclass
class _Job:
    """The tasks of one run on a cluster, submitted for the work not done yet; ``wait`` drives them."""

    client: Any
    writer: OmeZarrWriter
    source: Any
    plan: Plan
    settings: GenerationSettings
    engine_args: tuple[str, str | None, int]  # model folder, device, torch threads
    runtime: Runtime  # where the tiles are made (the provenance's device and dtype)
    provenance: dict[str, Any]
    payload: Payload | None  # the watermark each level-0 chunk gets after blending (None: turned off)
    say: Any
    progress: bool = False  # progress bars on the terminal
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # keys unique to this run
    chunks: dict[tuple[int, int, int], Any] = field(default_factory=dict)  # (level, cy, cx) → future
    renders: dict[str, tuple[Any, int]] = field(default_factory=dict)  # key → (future, tiles in its batch)
    glass: list[np.ndarray] = field(default_factory=list)  # per level: the glass class of each chunk, or None

    def _map(self, name: str, fn: Any, *columns: list[Any]) -> list[Any]:
        keys = [f"crafts-{name}-{self.token}-{i}" for i in range(len(columns[0]))]
        return self.client.map(fn, *columns, key=keys, retries=2) if keys else []

    def submit_level0(self) -> None:
        """Render tasks for the tiles the pending level-0 chunks need, and a blend task per pending chunk."""
        writer, grid = self.writer, self.plan.grid
        pending = writer.pending(0)  # none left: still classify the glass chunks for the reduced levels
        total = math.prod(writer.grid(0))
        if len(pending) < total:
            self.say(f"resuming: {total - len(pending)} of {total} level-0 chunks already written")
        wire = replace(self.plan, grid=replace(grid))  # what tasks get: a grid without a cached list of tiles
        store = _tile_store(writer, grid, self.provenance)
        empty = self._empty_mask(store, wire)
        if empty.all() and self.plan.tissue is not None and not self._source_is_empty(wire):
            raise GenerationError(no_tissue_message(self.source, self.plan.tissue, "level 0"))
        if empty.all():
            what = "nuclei" if self.source.mode == "labels" else "signal above the normalisation limits"
            raise GenerationError(f"{self.source.name} has no {what} anywhere in level 0: check the file "
                                  "(or --kind).")
        touching = {c: grid.tiles_touching(*writer.chunk_box(0, *c)) for c in pending}
        # chunks that only glass tiles touch: written in batches, without a blend task each (nor one per chunk of
        # the reduced levels above only such chunks: submit_pyramid)
        glass0 = np.zeros(writer.grid(0), dtype=bool)
        for c in np.ndindex(*glass0.shape):
            tiles = touching.get(c) or grid.tiles_touching(*writer.chunk_box(0, *c))
            glass0[c] = all(empty[t.row, t.col] for t in tiles)
        self.glass = _glass_classes(writer, glass0, self.payload is not None)
        self._submit_glass(0, [c for c in pending if self.glass[0][c] is not None])
        pending = [c for c in pending if self.glass[0][c] is None]
        needed = {(t.row, t.col) for ts in touching.values() for t in ts if not empty[t.row, t.col]}
        needed &= set(store.pending(0))
        # Batches are cut from all non-empty tiles in grid order, as generate_region cuts them, whatever is
        # left to do: a tile is always rendered beside the same neighbours, so resuming cannot change it.
        full = [(t.row, t.col) for t in grid.tiles if not empty[t.row, t.col]]
        # With batch size 0 (auto) a task takes AUTO_TASK_TILES tiles and its worker splits them by what fits
        # in its GPU's free memory (one at a time on CPU).
        b = self.settings.batch_size or AUTO_TASK_TILES
        batches = [batch for i in range(0, len(full), b) if needed & set(batch := full[i : i + b])]
        render = partial(_render_task, *self.engine_args, self.runtime, self.source, wire, self.settings, store)
        rendering: dict[tuple[int, int], Any] = {}
        for batch, fut in zip(batches, self._map("render", render, batches), strict=True):
            self.renders[fut.key] = fut, len(batch)
            rendering.update(dict.fromkeys(batch, fut))
        flags, waits = [], []
        for c in pending:
            flags.append([(t.row, t.col, bool(empty[t.row, t.col])) for t in touching[c]])
            waits.append(list({id(f): f for t in touching[c] if (f := rendering.get((t.row, t.col)))}.values()))
        blend = partial(_blend_task, writer, store, wire.grid, self.plan.glass_rgb, self.payload)
        futures = self._map("blend", blend, [c[0] for c in pending], [c[1] for c in pending], flags, waits)
        self.chunks.update({(0, *c): f for c, f in zip(pending, futures, strict=True)})

    def submit_pyramid(self) -> None:
        """A build task per pending chunk of each reduced level, waiting for the tasks of the chunks below."""
        for level in range(1, self.writer.levels):
            todo = self.writer.pending(level)
            if self.glass:
                self._submit_glass(level, [c for c in todo if self.glass[level][c] is not None])
                todo = [c for c in todo if self.glass[level][c] is None]
            waits = [list({f.key: f for sy in (2 * cy, 2 * cy + 1) for sx in (2 * cx, 2 * cx + 1)
                           if (f := self.chunks.get((level - 1, sy, sx))) is not None}.values()) for cy, cx in todo]
            build = partial(_pyramid_task, self.writer, level)
            futures = self._map(f"pyramid{level}", build, [c[0] for c in todo], [c[1] for c in todo], waits)
            self.chunks.update({(level, *c): f for c, f in zip(todo, futures, strict=True)})

    def _submit_glass(self, level: int, cells: list[tuple[int, int]]) -> None:
        """``_glass_task`` for ``cells`` of ``level`` (chunks of glass only), GLASS_CHUNKS_PER_TASK per task."""
        for i in range(0, len(cells), GLASS_CHUNKS_PER_TASK):
            batch = cells[i : i + GLASS_CHUNKS_PER_TASK]
            below = {f.key: f for cy, cx in batch for sy in (2 * cy, 2 * cy + 1) for sx in (2 * cx, 2 * cx + 1)
                     if level and (f := self.chunks.get((level - 1, sy, sx))) is not None}
            future = self.client.submit(_glass_task, self.writer, self.plan.glass_rgb, self.payload, level, batch,
                                        [self.glass[level][c] for c in batch], list(below.values()),
                                        key=f"crafts-glass{level}-{self.token}-{i}", retries=2)
            self.chunks.update({(level, *c): future for c in batch})

    def _empty_mask(self, store: OmeZarrWriter, plan: Plan) -> np.ndarray:
        """(rows, cols) True where a tile is glass, never sent to the model: ``generate_region``'s rule (no tissue;
        with ``--tissue all``, none once a scan has found something to draw; the scan is cached)."""
        grid = plan.grid
        if plan.tissue is not None:  # from the mask alone: nothing to read
            glass = np.array([not plan.has_tissue(t) for t in grid.tiles], dtype=bool).reshape(grid.rows, grid.cols)
            self.say(f"{int((~glass).sum()):,} of {plural(len(grid), 'tile')} touch tissue")
            return glass if self.settings.skip_empty or glass.all() else np.zeros_like(glass)
        cache = Path(store.path, EMPTY_MASK)
        if cache.is_file() and (mask := np.load(cache)).shape == (grid.rows, grid.cols):
            return mask if mask.all() else np.zeros_like(mask)
        what = "nuclei" if self.source.mode == "labels" else "signal"
        self.say(f"checking {plural(len(grid), 'tile')} for {what} …")
        mask = scan_empty(self.source, plan, self._run_scan_tasks)
        held = int((~mask).sum())
        self.say(f"{held:,} of {plural(len(grid), 'tile')} {'holds' if held == 1 else 'hold'} {what}")
        with atomic_file(cache) as tmp, open(tmp, "wb") as fh:  # a kill never leaves half a mask
            np.save(fh, mask)
        return mask if mask.all() else np.zeros_like(mask)  # everything is tissue: every tile is generated

    def _source_is_empty(self, plan: Plan) -> bool:
        """Whether no tile holds nuclei or signal (the scan, for the message when the tissue extent is empty)."""
        return bool(scan_empty(self.source, plan, self._run_scan_tasks).all())

    def _run_scan_tasks(self, name: str, fn: Any, groups: Any) -> list[Any]:
        return run_tasks(self.client, self.token, self.progress, name, fn, groups)

    def wait(self, progress: bool, on_progress: Callable[[str, int, int], None] | None = None,
             cancel: threading.Event | None = None) -> None:
        """Wait for every task with tile and chunk progress bars; on the first error (or ``cancel``) cancel the
        rest and raise."""
        from distributed import as_completed
        from tqdm.auto import tqdm

        per_future = Counter(f.key for f in self.chunks.values())  # a glass task writes many chunks
        futures = [f for f, _ in self.renders.values()] + list({f.key: f for f in self.chunks.values()}.values())
        n_tiles = sum(n for _, n in self.renders.values())
        tile_bar = tqdm(total=n_tiles, unit="tile", desc="tiles", disable=not progress or not n_tiles)
        chunk_bar = tqdm(total=len(self.chunks), unit="chunk", desc="chunks", disable=not progress)
        tiles_done = chunks_done = 0  # counted here: a disabled tqdm bar does not count
        try:
            for fut in as_completed(futures):
                fut.result()  # re-raises a task's error (after its retries) here
                if fut.key in self.renders:
                    tiles_done += self.renders[fut.key][1]
                    tile_bar.update(self.renders[fut.key][1])
                else:
                    chunks_done += per_future[fut.key]
                    chunk_bar.update(per_future[fut.key])
                if on_progress is not None:
                    on_progress("tiles", tiles_done, n_tiles)
                    on_progress("chunks", chunks_done, len(self.chunks))
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Stopped on request; finished tiles are kept: resume to continue.")
        except BaseException:
            self.client.cancel(futures)
            raise
        finally:
            tile_bar.close()
            chunk_bar.close()


def run_tasks(client: Any, token: str, progress: bool, name: str, fn: Any, groups: Any) -> list[Any]:
    """``fn(group)`` for every group on the workers, in order, with a progress bar; the first error cancels the
    rest (so none is left to report itself later). The ``run_tasks`` of the scan and of the tissue extent."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    groups = list(groups)
    keys = [f"crafts-{name}-{token}-{i}" for i in range(len(groups))]
    futures = client.map(fn, groups, key=keys, retries=2) if keys else []
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    desc = {"scan": "scan blocks", "tissue": "tissue blocks"}.get(name, "scan tiles")
    bar = tqdm(total=sum(len(g) for g in groups), desc=desc, disable=not progress or not futures)
    try:
        for fut in as_completed(futures):
            results[index[fut.key]] = fut.result()
            bar.update(len(groups[index[fut.key]]))
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        bar.close()
    return results


def _tile_store(writer: OmeZarrWriter, grid: TileGrid, provenance: dict[str, Any]) -> OmeZarrWriter:
    """The private tile store: tile (row, col) is chunk (row, col) of one (rows·S, cols·S) level, with
    export's done markers; reopened (settings checked) when it exists, recreated when it is unusable."""
    path = Path(writer.path, TILE_STORE)
    shape = (grid.rows * grid.tile, grid.cols * grid.tile)
    prov = {**provenance, "tile_store": "private to napari-crafts batch generation; deleted when finished"}
    kw: dict[str, Any] = dict(mpp=None, provenance=prov, chunk=grid.tile, levels=1)
    try:
        return create_ome_zarr(path, shape, resume=True, **kw)
    except ValueError:  # cut short while being created, or from other settings: it is only a cache
        remove_private(writer.path, TILE_STORE)  # only what we wrote there
        return create_ome_zarr(path, shape, **kw)


# --------------------------------------------------------------------------------------------- CLI
