"""Generate synthetic H&E over a region: the one code path behind the napari widgets and the CLI.

``generate_region`` is a Qt-free generator: it yields ``Progress`` after every denoising step and
``TileDone`` after every tile (with the freshly blended pixels), and returns a ``RegionResult``. Stopping
the generator (napari's worker.quit, Ctrl-C) stops within one step; tiles already yielded stay valid.
The result carries the invisible watermark (``export.watermark``, on its 512-px chunk grid, as the whole-slide
writer marks); tiles yielded during the run are previews without it.

Coordinates: a Region is in the source's level-0 pixels. The model works at its own pixel size
(``Engine.mpp``); each tile is read at the source's scale, resampled to the model's, generated, and
resampled back, so the output has exactly the source's pixel grid and overlays it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._generators import mapped, run  # noqa: F401  (run: this module's API; drives any of our generators)
from .._types import DescribesModel, GenerationEngine, ModelGeometry, PromptModel
from ..model.card import CONTROL_ENCODINGS, NUCLEI_V1, TISSUE_ENCODINGS
from ..model.threads import pinned
from ..provenance import make_provenance
from .conditioning import LABELS_ENCODING_TEXT
from .events import BatchProgress, Progress, TileDone  # noqa: F401  (BatchProgress: this module's API)
from .settings import GenerationSettings, SettingsError  # noqa: F401  (SettingsError: this module's API)
from .sources import ControlSource, resize
from .tiling import Stitcher, Tile, TileGrid, blend_order, noise_field
from .tissue import RunTasks, TissueMask, composite, is_choice, resolve_tissue

#: Glass: the colour of tiles with no tissue (never sent to the model) and of the glass composited around tissue,
#: unless the model's card declares its own (``glass_rgb`` in napari_crafts.json).
BACKGROUND_RGB = (240, 240, 240)


EMPTY_MESSAGES = {
    "labels": "Labels layer '{name}' is empty in this region: paint or load nuclei first.",
    "fluorescence": "'{name}' has no signal above background in this region: check the channel roles and limits.",
}


class GenerationError(Exception):
    """Generation could not go on; the message says why and what to try.

    Not a RuntimeError: superqt's workers take a RuntimeError for a deleted Qt object and stay silent.
    """


@dataclass(frozen=True)
class Region:
    """A box in the source's level-0 pixels."""

    y: int
    x: int
    height: int
    width: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.y, self.x, self.y + self.height, self.x + self.width


@dataclass(frozen=True)
class Plan:
    """How a region maps onto model tiles: scale factor, tile grid in source pixels, model tile size."""

    region: Region
    factor: float  # model px per source px
    model_tile: int  # px the model sees per tile
    grid: TileGrid  # in source px, relative to region origin
    vae_scale_factor: int
    notes: tuple[str, ...] = ()
    tissue: TissueMask | None = None  # where the tissue is (None: everywhere); see attach_tissue
    glass_rgb: tuple[int, int, int] = BACKGROUND_RGB
    model_mpp: float | None = None
    control_encoding: str = NUCLEI_V1  # what the model reads (its card's, for the source's mode)

    @property
    def draws_tissue(self) -> bool:
        """Whether the control image carries the tissue (the model draws the glass: nothing is composited)."""
        return self.control_encoding in TISSUE_ENCODINGS

    def tissue_window(self, tile: Tile) -> np.ndarray:
        """(S, S) bool: where ``tile`` is tissue (alpha ≥ 0.5; everywhere without a tissue mask)."""
        if self.tissue is None:
            return np.ones((tile.size, tile.size), bool)
        r = self.region
        return self.tissue.alpha(r.y + tile.y, r.x + tile.x, tile.size, tile.size) >= 0.5

    def has_tissue(self, tile: Tile) -> bool:
        """Whether ``tile`` touches tissue (always, without a tissue mask)."""
        r = self.region
        return self.tissue is None or self.tissue.touches(r.y + tile.y, r.x + tile.x, tile.size, tile.size)

    def latent_origin(self, tile: Tile) -> tuple[int, int]:
        """The tile's origin on the slide-wide latent grid (where its noise is cut from)."""
        f, v = self.factor, self.vae_scale_factor
        return round((self.region.y + tile.y) * f / v), round((self.region.x + tile.x) * f / v)


#: How far (either way) a source's pixel size may be from the model's: beyond it a model tile covers a handful of
#: source pixels, or one model pixel is blown up over a blur of many (and 1e-9 µm/px asks for exabytes).
MAX_SCALE = 16
#: Largest tile side in source pixels (a float weight map of this side is 1 GiB).
MAX_SOURCE_TILE = 16384


def check_scale(name: str | None, source_mpp: float, model_mpp: float) -> None:
    """Refuse a source pixel size no run can use (see ``MAX_SCALE``), saying which sizes this model can use."""
    factor = source_mpp / model_mpp
    if 1 / MAX_SCALE <= factor <= MAX_SCALE:
        return
    what = f"'{name}'" if name else "The output"
    times = max(factor, 1 / factor)
    ratio = f"{times:,.0f}× {'coarser' if factor > 1 else 'finer'}"
    raise GenerationError(f"{what} at {source_mpp:g} µm/px is {ratio} than the model's {model_mpp:g} µm/px: this "
                          f"model works on {model_mpp / MAX_SCALE:.3g} to {model_mpp * MAX_SCALE:.3g} µm/px; check "
                          "the pixel size (the file's, or the one given).")


def plan_region(source: ControlSource | None, region: Region, engine: ModelGeometry, settings: GenerationSettings,
                *, source_mpp: float | None = None) -> Plan:
    """Check the region against the source and work out the tiling at the model's pixel size."""
    notes: list[str] = []
    if source is not None:
        H, W = source.shape
        y0, x0, y1, x1 = region.box
        if region.height <= 0 or region.width <= 0:
            raise GenerationError(f"The region is empty ({region.height}×{region.width} px).")
        if y0 < 0 or x0 < 0 or y1 > H or x1 > W:
            raise GenerationError(
                f"The region [{y0}:{y1}, {x0}:{x1}] lies outside '{source.name}' ({H}×{W} px); "
                "draw the rectangle over the layer or choose 'whole layer'."
            )
        source_mpp = source.mpp
    mult = engine.size_multiple
    tile = max(mult, settings.tile_size // mult * mult)
    if source_mpp is None:
        factor = 1.0
        if source is not None:
            notes.append(f"'{source.name}' has no pixel size: assumed the model's {engine.mpp} µm/px.")
    else:
        factor = source_mpp / engine.mpp
        check_scale(source.name if source is not None else None, source_mpp, engine.mpp)
    longest = max(region.height, region.width) * factor
    if longest < tile:  # a small region: one tile just big enough
        tile = max(mult, -(-int(np.ceil(longest)) // mult) * mult)
    src_tile = max(1, round(tile / factor))
    if src_tile > MAX_SOURCE_TILE:
        raise GenerationError(f"A {tile}-px model tile covers {src_tile:,} source px at {source_mpp:g} µm/px, more "
                              f"than one tile can hold ({MAX_SOURCE_TILE:,}): use a tile size of at most "
                              f"{max(mult, int(MAX_SOURCE_TILE * factor) // mult * mult)} px.")
    overlap = min(round(settings.overlap / factor), src_tile // 2)
    grid = TileGrid(region.height, region.width, src_tile, overlap)
    glass = getattr(engine, "glass_rgb", None) or BACKGROUND_RGB
    mode = source.mode if source is not None else ""
    declared = getattr(engine, "control_encoding", None)  # mode → encoding (ModelDescription, Engine)
    encoding = declared.get(mode) if isinstance(declared, dict) else None
    encoding = encoding if isinstance(encoding, str) else CONTROL_ENCODINGS.get(mode, ("",))[0]
    return Plan(region, factor, tile, grid, engine.vae_scale_factor, tuple(notes),
                glass_rgb=tuple(int(v) for v in glass), model_mpp=engine.mpp,  # type: ignore[arg-type]
                control_encoding=encoding)


def no_tissue_message(source: ControlSource, tissue: TissueMask | None, where: str) -> str:
    """What to say when the tissue extent holds no tissue where nuclei (or signal) are."""
    how = tissue.how if tissue is not None else "all"
    if is_choice(source.tissue):
        return (f"The auto tissue rule found no tissue in {where} of '{source.name}' ({how}): its nuclei are too "
                "few or too scattered; pass tissue 'all' (--tissue all) or a mask of the tissue.")
    return (f"The tissue mask ({how}) marks no tissue in {where}: give a mask that covers the specimen, or tissue "
            "'auto' / 'all'.")


def attach_tissue(plan: Plan, source: ControlSource | None, run_tasks: RunTasks | None = None) -> Plan:
    """``plan`` with the tissue extent of ``source`` over its region (``generation.tissue``; read once per run).

    ``run_tasks`` spreads the reading of an auto mask (the whole-slide path passes its cluster's).
    """
    if source is None or plan.model_mpp is None:
        return plan
    tissue = resolve_tissue(source, plan.region.box, plan.model_mpp * plan.factor, run_tasks)
    return dataclasses.replace(plan, tissue=tissue)


def glass_tiles(source: ControlSource | None, plan: Plan, settings: GenerationSettings) -> set[Tile]:
    """The tiles that are glass (no tissue: filled with the glass colour, never sent to the model).

    Refuses a region with nothing to draw: no nuclei (or signal) at all, or a tissue mask with no tissue in it.
    """
    if source is None:
        return set()
    grid, r = plan.grid, plan.region
    glass = {t for t in grid.tiles if not plan.has_tissue(t)} if settings.skip_empty else set()
    if len(glass) == len(grid) or plan.tissue is None:
        if all(source.is_empty(r.y + t.y, r.x + t.x, t.size) for t in grid.tiles):
            raise GenerationError(EMPTY_MESSAGES.get(source.mode, "'{name}' is empty in this region.")
                                  .format(name=source.name))
    if len(glass) == len(grid):
        raise GenerationError(no_tissue_message(source, plan.tissue, "this region"))
    return glass


@dataclass
class RegionResult:
    rgb: np.ndarray
    provenance: dict[str, Any]
    tiles_generated: int = 0
    tiles_skipped: int = 0
    notes: list[str] = field(default_factory=list)


def render_tiles(engine: GenerationEngine, source: ControlSource | None, plan: Plan, tiles: list[Tile],
                 settings: GenerationSettings) -> Generator[Any, None, list[np.ndarray]]:
    """Generate ``tiles`` as one batch; yields engine Steps; returns each tile at source scale (S, S, 3)."""
    latent = plan.model_tile // plan.vae_scale_factor
    noise = np.stack([noise_field(settings.seed, *plan.latent_origin(t), latent, latent) for t in tiles])
    control = None
    if source is not None:
        control = np.stack([
            source.control(plan.region.y + t.y, plan.region.x + t.x, t.size, plan.model_tile,
                           tissue=plan.tissue_window(t) if plan.draws_tissue else None) for t in tiles
        ])
    # the torch thread count is pinned in whichever thread runs the steps: pixels never depend on the thread
    images = yield from pinned(engine.generate(
        noise, control, prompt=settings.prompt, negative_prompt=settings.negative_prompt, steps=settings.steps,
        guidance_scale=settings.guidance_scale, controlnet=settings.controlnet,
        controlnet_scale=settings.controlnet_scale, scheduler=settings.scheduler,
        mode=source.mode if source is not None else "prompt", cfg_cutoff=settings.cfg_cutoff,
        cache_interval=settings.cache_interval,
    ))
    out = [resize(img, plan.grid.tile) for img in images]
    if plan.tissue is not None and not plan.draws_tissue:  # glass around the tissue: the encoding cannot carry it
        r = plan.region
        out = [composite(img, plan.tissue.alpha(r.y + t.y, r.x + t.x, t.size, t.size), plan.glass_rgb)
               for img, t in zip(out, tiles, strict=True)]
    return out


def render_tiles_adaptive(engine: GenerationEngine, source: ControlSource | None, plan: Plan, tiles: list[Tile],
                          settings: GenerationSettings, on_step: Any,
                          batch: int | None = None) -> Generator[Any, None, list[np.ndarray]]:
    """``render_tiles`` in batches of ``batch`` (default: ``tiles_per_call``), halving it on out-of-memory.

    Yields ``on_step(step)`` for every engine step. A halved batch is remembered by the engine
    (``cap_batch``): later calls, and later chunks of this run, start from it instead of running out again.
    """
    from ..model.engine import is_out_of_memory

    out: list[np.ndarray] = []
    flags = {"guidance": settings.guidance_scale > 1.0, "control": source is not None}
    batch = batch or tiles_per_call(engine, source, plan, settings)
    while len(out) < len(tiles):
        batch = min(batch, engine.batch_cap(plan.model_tile, **flags) or batch)
        chunk = tiles[len(out) : len(out) + batch]
        try:
            images = yield from mapped(render_tiles(engine, source, plan, chunk, settings), on_step)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _empty_cache()
            if batch == 1:
                raise GenerationError(
                    f"Out of GPU memory at batch size 1 with {plan.model_tile}-px tiles. Use a smaller tile size, "
                    "fp16, fewer other programs on the GPU, or the CPU."
                ) from None
            batch //= 2
            engine.cap_batch(plan.model_tile, batch, **flags)
            continue
        out.extend(images)
    return out


def tiles_per_call(engine: GenerationEngine, source: ControlSource | None, plan: Plan,
                   settings: GenerationSettings) -> int:
    """``settings.batch_size``, or for 0 (auto) what fits in free GPU memory (``Engine.auto_batch``)."""
    if settings.batch_size > 0:
        return settings.batch_size
    return engine.auto_batch(plan.model_tile, guidance=settings.guidance_scale > 1.0, control=source is not None)


def _empty_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def generate_region(engine: GenerationEngine, source: ControlSource | None, region: Region,
                    settings: GenerationSettings = GenerationSettings(),
                    *, source_mpp: float | None = None, watermark: bool | str = True,
                    plan: Plan | None = None) -> Generator[Progress | TileDone, None, RegionResult]:
    """Generate synthetic H&E for ``region`` of ``source`` (None: prompt only), tile by tile.

    The result is watermarked once it is final; ``watermark=False`` (or the name of the switch that turned it
    off, e.g. "--no-watermark") leaves the pixels alone and records that it was off (``sign_record``).
    ``plan``: ``plan_region``'s plan for these arguments when the caller has made it already (``generation.job``).
    """
    from ..export.watermark import sign_record, watermark_image

    if plan is None:
        plan = plan_region(source, region, engine, settings, source_mpp=source_mpp)
    plan = attach_tissue(plan, source)
    grid = plan.grid
    empty = glass_tiles(source, plan, settings)
    notes = region_notes(engine, plan, settings)
    if source is not None and plan.tissue is not None and not is_choice(source.tissue):  # the user's own mask
        held = sum(not source.is_empty(region.y + t.y, region.x + t.x, t.size) for t in empty)
        if held:
            notes.append(f"{held} tile(s) hold nuclei or signal outside the tissue mask: they are drawn as glass.")
    stitcher = Stitcher(region.height, region.width)
    ordered = blend_order(grid.tiles, empty)  # glass first: the one order every path blends in
    todo: list[Tile] = ordered[len(empty) :]
    done = skipped = 0
    n = len(grid)
    fill = np.broadcast_to(np.array(plan.glass_rgb, np.uint8), (grid.tile, grid.tile, 3))
    for tile in ordered[: len(empty)]:
        box = stitcher.add_tile(tile, fill, grid.weights(tile))
        done += 1
        skipped += 1
        yield TileDone(done, n, box, stitcher.read(*box), skipped=True)

    def progress(step: Any) -> Progress:
        return Progress(done, n, step.step, step.steps)

    batch = tiles_per_call(engine, source, plan, settings) if todo else 1
    for i in range(0, len(todo), batch):
        chunk = todo[i : i + batch]
        images = yield from render_tiles_adaptive(engine, source, plan, chunk, settings, progress, batch)
        for tile, image in zip(chunk, images, strict=True):
            box = stitcher.add_tile(tile, image, grid.weights(tile))
            done += 1
            yield TileDone(done, n, box, stitcher.read(*box))
    prov = region_provenance(engine, source, plan, settings, notes,
                             settings_extra={"tiles_skipped_empty": skipped, "tiles_per_call": batch})
    rgb = stitcher.read(0, 0, region.height, region.width)
    payload = sign_record(prov, watermark)  # the record is final: its hash is the watermark's payload
    if payload is not None:
        rgb = watermark_image(rgb, payload)
    return RegionResult(rgb, prov, n - skipped, skipped, notes)


def region_notes(engine: PromptModel, plan: Plan, settings: GenerationSettings) -> list[str]:
    """What the user should be told about a run: the plan's notes, and what CLIP cut from the prompt."""
    notes = list(plan.notes)
    if cut := engine.truncated_tokens(settings.prompt):
        notes.append(f"The prompt is longer than CLIP's 77 tokens; cut: '{' '.join(cut)}'.")
    return notes


def _tissue_record(source: ControlSource | None, plan: Plan) -> dict[str, Any]:
    if source is None:
        return {}
    if plan.tissue is None:
        return {"tissue": {"how": "all: everything is tissue (no glass)"}}
    drawn = (f"the model draws the glass inside generated tiles (control encoding {plan.control_encoding}: glass "
             "where the mask's alpha < 0.5)" if plan.draws_tissue else
             "generated tiles are composited over the glass colour with the mask's bilinear alpha")
    return {"tissue": {**plan.tissue.describe(), "glass": f"tiles without tissue are glass (not generated); {drawn}"}}


def region_provenance(engine: DescribesModel, source: ControlSource | None, plan: Plan, settings: GenerationSettings,
                      notes: list[str], *, settings_extra: dict[str, Any] | None = None,
                      source_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of a region run (in memory or on a cluster: the same record)."""
    grid, region = plan.grid, plan.region
    return make_provenance(
        mode=source.mode if source is not None else "prompt",
        model=engine.describe(settings.controlnet, source.mode if source is not None else None),
        settings={**settings.record(), "tile_size_source_px": grid.tile, "overlap_source_px": grid.overlap,
                  "model_tile_px": plan.model_tile, "scale_factor": plan.factor, "tiles": len(grid),
                  "background_rgb": list(plan.glass_rgb), **(settings_extra or {})},
        source={**(source.describe() if source is not None else {}), **_tissue_record(source, plan),
                **({"encoding": LABELS_ENCODING_TEXT[plan.control_encoding]} if plan.draws_tissue else {}),
                **(source_extra or {})},
        region={"y": region.y, "x": region.x, "height": region.height, "width": region.width},
        notes=notes,
    )

