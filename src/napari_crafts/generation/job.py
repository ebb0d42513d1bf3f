"""The run layer: one Qt-free call behind the Labels, Fluorescence and Prompt docks and ``demo``.

``run_job(model, job)`` is a generator that owns, in this order (diffusers' numbered-steps style):

1. the heavy imports, in a daemon thread (a job stopped meanwhile ends within 0.1 s, ``background_imports``);
2. the engine (``get_engine``; its networks made stoppable inside a step; the model remembered for the list);
3. generation (``generate_region``, or ``prompt_images`` for a stack of images from text) with its watermark and
   provenance, planned once;
4. on a CPU, the long-run estimate, measured on the run's own first tile (``estimate.measure_first_tile``), and
   the user's answer: go on (the first tile is kept), or start again with the fast settings (``Restart``).

It yields the events every caller maps in one place: ``Stage`` (what it does now), ``RunEstimate`` (a CPU run's
estimate: when ``long`` the caller asks the user and answers the ``RunDecision``), ``Restart`` (the fast settings
were chosen: the run starts again), ``Progress`` (a denoising step), ``TileDone`` (a tile's pixels) and, for
stacks, the same events with their image as ``plane``; None now and then while imports run (nothing to show). It
returns the ``RegionResult``. Cancelling is one channel: the ``threading.Event`` of the
``model.interrupt.cancel_scope`` the caller runs it in (networks stop inside a step, a waiting decision gives up).

The whole-slide path (``wsi.job.generate_slide``) renders with the same ``render_tiles`` on dask workers.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from .._generators import mapped
from ..model.interrupt import JobCancelled
from .estimate import FirstTile, RunDecision, estimate_run, fast_settings, measure_first_tile
from .events import Restart, Stage
from .region import (
    GenerationError,
    GenerationSettings,
    Plan,
    Progress,
    Region,
    RegionResult,
    TileDone,
    generate_region,
    plan_region,
    tiles_per_call,
)
from .sources import ControlSource

#: What building an engine imports (seconds, the first time): module → names whose import loads the parts used.
HEAVY_IMPORTS = {
    "torch": (),
    "diffusers": ("AutoencoderKL", "ControlNetModel", "StableDiffusionPipeline", "UNet2DConditionModel"),
    "transformers": ("CLIPTextModel",),
}


@dataclass(frozen=True)
class ModelChoice:
    """Which model runs, and where: what the engine is given.

    ``model``: a folder, a hub id or a built-in id (``demo``, ``tiny-demo``); ``ref``: what the user chose, as the
    model list shows it (remembered there once it loads; defaults to ``model``). The whole-slide path takes the
    same choice (``wsi.job.generate_slide``).
    """

    model: str
    ref: str = ""
    device: str | None = None
    allow_pickle: bool = False
    lora: str | None = None  # a LoRA loaded over the UNet (``model.lora``)

    @classmethod
    def chosen(cls, ref: str, *, device: str | None = None, allow_pickle: bool = False) -> ModelChoice:
        """The choice for a model-list entry, Browse… folder or hub id (``demo`` is the bundled folder)."""
        from ..model.catalog import resolve

        ref = ref.strip()
        if not ref:
            raise GenerationError("Choose a model in the list, Browse… for a model folder, or type a hub id.")
        return cls(resolve(ref), ref, device, allow_pickle)

    @property
    def name(self) -> str:
        return self.ref or self.model

    def mpp(self) -> float:
        """The model's pixel size from its card, without loading it (``model.catalog.model_mpp``)."""
        from ..model.catalog import model_mpp

        return model_mpp(self.name)


@dataclass(frozen=True)
class RegionJob:
    """What to generate: ``region`` of ``source`` (None: from the prompt alone) with ``settings``.

    ``images``: for a prompt job, that many images with seeds seed, seed + 1, … as one stack. ``watermark``: True,
    or the name of the switch that turned it off (recorded in the provenance).
    """

    source: ControlSource | None
    region: Region
    settings: GenerationSettings
    watermark: bool | str = True
    images: int = 1

    def __post_init__(self) -> None:
        if self.images < 1 or (self.images > 1 and self.source is not None):
            raise ValueError(f"images={self.images}: a stack of images is made from a prompt alone (source None).")


def background_imports() -> Generator[None, None, None]:
    """Import :data:`HEAVY_IMPORTS` in a daemon thread, yielding None (nothing to show) every 0.1 s until done.

    A napari worker stops at a yield once asked to (Cancel, a removed layer, the viewer's window closing), so such
    a job ends within 0.1 s instead of after the imports (5-15 s on a CPU): Python does not wait for a daemon
    thread at exit, and an import touches no Qt object. An import that fails is left to the engine, which says
    what is missing.
    """
    import importlib
    import sys

    if all(name in sys.modules for name in HEAVY_IMPORTS):
        return
    done = threading.Event()

    def load() -> None:
        try:
            for name, attrs in HEAVY_IMPORTS.items():
                module = importlib.import_module(name)
                for attr in attrs:
                    getattr(module, attr)
        except Exception:  # noqa: BLE001 - the engine imports again and reports it in one line
            pass
        finally:
            done.set()

    threading.Thread(target=load, name="napari-crafts imports", daemon=True).start()
    while not done.wait(0.1):
        yield None


def load_engine(model: ModelChoice, *, mode: str | None = None, controlnet: str | None = None) -> Any:
    """The engine for ``model`` (cached), its networks stoppable inside a step (``model.interrupt``), and the
    model remembered in the model list; ``mode`` ("labels", "fluorescence"): its ControlNet is loaded too."""
    from ..model.catalog import remember_model
    from ..model.engine import get_engine
    from ..model.interrupt import make_interruptible

    engine = get_engine(model.model, device=model.device, allow_pickle=model.allow_pickle, lora=model.lora)
    nets = [engine.unet, engine.vae, engine.text_encoder]
    if mode is not None and mode != "prompt":
        nets.append(engine.controlnet(controlnet, mode))
    make_interruptible(*nets)
    remember_model(model.name)
    return engine


def run_job(
    model: ModelChoice, job: RegionJob, *, decision: RunDecision | None = None, engine: Any = None
) -> Generator[Any, None, RegionResult]:
    """Load the model, generate, and on a CPU ask ``decision`` when the run is long: see the module.

    Without ``decision`` a long run goes ahead with ``job.settings`` (scripts, the CLI). ``engine``: one already
    loaded for ``model`` (skips steps 1–2).
    """
    source, settings = job.source, job.settings
    mode = source.mode if source is not None else None
    if engine is None:
        yield from background_imports()
        engine = load_engine(model, mode=mode, controlnet=settings.controlnet)
    yield Stage(f"model loaded ({engine.device}); preparing the first tile…")

    def start(s: GenerationSettings, plan: Plan | None = None) -> tuple[Plan, Generator[Any, None, RegionResult]]:
        plan = plan or plan_region(source, job.region, engine, s)
        if source is None:
            return plan, prompt_images(engine, s, job.images, job.region.height, job.region.width,
                                       watermark=job.watermark)
        return plan, generate_region(engine, source, job.region, s, watermark=job.watermark, plan=plan)

    plan, work = start(settings)
    if decision is None or str(engine.device) != "cpu":
        return (yield from work)
    per_call = tiles_per_call(engine, source, plan, settings)
    first = yield from measure_first_tile(work, engine, settings, per_call=per_call)
    if not isinstance(first, FirstTile):  # the run ended with its first tile
        return cast(RegionResult, first[1])
    fast = fast_settings(settings, int(engine.vae_scale_factor), student=bool(engine.card.student))
    fast_plan = plan_region(source, job.region, engine, fast)
    share = first.model_tiles / (len(plan.grid) * job.images)  # the model's share of the tiles (no glass)
    estimate = estimate_run(engine, first, settings, plan.model_tile, fast=fast,
                            fast_tiles=max(1, round(len(fast_plan.grid) * job.images * share)),
                            fast_model_tile=fast_plan.model_tile)
    yield estimate
    if not estimate.long:
        return (yield from work)
    chosen = decision.wait()
    if chosen is None:
        work.close()
        raise JobCancelled("cancelled after the first tile")
    if chosen == settings:
        return (yield from work)
    work.close()
    yield Restart(chosen)
    return (yield from start(chosen, fast_plan if chosen == fast else None)[1])  # the fast plan is made already


def prompt_images(
    engine: Any, settings: GenerationSettings, count: int, height: int, width: int, *, watermark: bool | str = True
) -> Generator[Progress | TileDone, None, RegionResult]:
    """``count`` images from the prompt alone, seeds seed, seed+1, …; events carry the image index as plane.

    Each image is watermarked with its own record, kept in the stack's record under ``"images"`` (as
    ``generate_region`` marks one).
    """
    images, records = [], []
    for i in range(count):
        gen = generate_region(
            engine,
            None,
            Region(0, 0, height, width),
            dataclasses.replace(settings, seed=settings.seed + i),
            watermark=watermark,
        )
        result = yield from mapped(gen, functools.partial(_in_stack, image=i, count=count))
        images.append(result.rgb)
        records.append(result.provenance)
    prov = {
        "synthetic": True,
        "mode": "prompt",
        "images": records,
        "warning": records[0]["warning"],
        "seeds": [r["seed"] for r in records],
        "model": records[0]["model"],
        "prompt": settings.prompt,
    }
    return RegionResult(np.stack(images), prov, sum(r["tiles"] for r in records), 0, records[0]["notes"])


def _in_stack(event: Progress | TileDone, *, image: int, count: int) -> Progress | TileDone:
    """An image's event counted over the whole stack (its tiles land on plane ``image``)."""
    done, total = event.tiles_done + image * event.tiles, event.tiles * count
    if isinstance(event, TileDone):
        return dataclasses.replace(event, tiles_done=done, tiles=total, plane=(image,))
    return dataclasses.replace(event, tiles_done=done, tiles=total)
