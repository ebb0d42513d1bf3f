"""How long a CPU run will take, measured on its own first tile; and the fast settings to offer when that is long
(Qt-free).

On a CPU a default run (50 steps, 512-px tiles) can take many minutes per tile. Probing small tiles and
extrapolating was measured wrong by 6× (a fixed cost per network pass dominates small tiles), so the run itself is
the probe: ``measure_first_tile`` passes the run's events on while it times the network passes of the first tile
the model draws and, when that tile is short (``FIRST_TILE_S``), the whole tile with its decode; ``estimate_run``
scales that to the run (the model's tiles only: glass is counted out) and to the fast settings. The user decides
while the run waits (``RunDecision``); the tile made meanwhile is kept when they run anyway.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ..model.interrupt import current_cancel
from .events import Progress
from .progress import format_duration
from .settings import GenerationSettings

#: A CPU run estimated longer than this (seconds) is offered the fast settings before it goes on.
LONG_RUN_S = 120.0
#: A first tile expected to take at most this long (seconds) is timed to its end, decode included; a longer one is
#: timed for ``MEASURE_PASSES`` network passes, its decode counted as ``DECODE_PASSES`` passes.
FIRST_TILE_S = 20.0
#: Network passes timed before a long first tile is estimated (the first pays one-off set-up and is not counted).
MEASURE_PASSES = 3
#: A decode not yet timed, in network passes (the demo model's 512-px decode measured ~2 UNet passes with CFG).
DECODE_PASSES = 2.0
#: Fast settings for a CPU: fewer steps with a multistep scheduler, guidance for the first half only, feature
#: reuse. Approximate (recorded as such in the provenance, and the layer name says so).
FAST_SETTINGS = GenerationSettings(scheduler="unipc", steps=10, cfg_cutoff=0.5, cache_interval=2)
#: Tiles whose latents are larger than SD's own 64² are made smaller by the fast settings (the tiny model's 2×
#: autoencoder: 128 px); at 64² they stay (an 8× autoencoder's 512 px: smaller tiles would cost more tiles and
#: overlap for less fidelity: measured with the demo model, docs/demo_model.md).
FAST_LATENT_SIDE = 64

@dataclass(frozen=True)
class RunEstimate:
    """The expected length of a run, and what it is made of; ``fast``: the fast settings offered instead, and
    ``fast_seconds`` their own estimate."""

    seconds: float
    tiles: int
    steps: int
    model_tile: int
    device: str
    fast: GenerationSettings | None = None
    fast_seconds: float | None = None

    @property
    def long(self) -> bool:
        """Worth asking before starting: on a CPU and longer than ``LONG_RUN_S``."""
        return self.device == "cpu" and self.seconds > LONG_RUN_S

    def text(self) -> str:
        where = "on the CPU" if self.device == "cpu" else f"on {self.device}"
        return (f"about {format_duration(self.seconds)} {where} ({self.tiles} tile{'s' * (self.tiles != 1)} × "
                f"{self.steps} steps at {self.model_tile} px, timed on the first)")

    def fast_text(self) -> str:
        """What the fast settings are, and how long they would take."""
        if self.fast is None:
            return ""
        f = self.fast
        took = f": about {format_duration(self.fast_seconds)}" if self.fast_seconds is not None else ""
        if f.scheduler == "lcm":
            return f"the model's few-step student (LCM), {f.steps} steps, {f.tile_size}-px tiles (approximate){took}"
        return (f"UniPC, {f.steps} steps, guidance for the first {f.cfg_cutoff:.0%}, feature reuse, "
                f"{f.tile_size}-px tiles (approximate){took}")


def fast_settings(settings: GenerationSettings, vae_scale_factor: int = 8, *,
                  student: bool = False) -> GenerationSettings:
    """``settings`` with the fast values (never a larger tile or more steps than asked for); ``student``: the
    model declares a few-step student, and the fast settings run it (lcm, ``LCM_DEFAULT_STEPS``, no CFG)."""
    f = FAST_SETTINGS
    tile = min(settings.tile_size, max(128, FAST_LATENT_SIDE * vae_scale_factor))
    if student:
        from ..model.engine import FEW_STEP_SCHEDULER, LCM_DEFAULT_STEPS

        return dataclasses.replace(settings, scheduler=FEW_STEP_SCHEDULER, steps=min(settings.steps, LCM_DEFAULT_STEPS),
                                   cfg_cutoff=1.0, cache_interval=1, tile_size=tile,
                                   overlap=min(settings.overlap, tile // 8))
    return dataclasses.replace(settings, scheduler=f.scheduler, steps=min(settings.steps, f.steps),
                               cfg_cutoff=f.cfg_cutoff, cache_interval=f.cache_interval, tile_size=tile,
                               overlap=min(settings.overlap, tile // 8))


def network_passes(engine: Any, settings: GenerationSettings) -> int:
    """Network passes per tile: the scheduler's timesteps (PNDM makes one more than the steps)."""
    sched = engine.make_scheduler(settings.scheduler)
    sched.set_timesteps(settings.steps)
    return len(sched.timesteps)


def pass_weights(engine: Any, settings: GenerationSettings) -> list[float]:
    """Each network pass of a tile, in full guided passes: an unguided pass runs half the batch; a shallow
    (feature-reuse) pass is taken as a third of a full one; the few-step student runs without guidance."""
    passes = network_passes(engine, settings)
    guidance = settings.guidance_scale > 1.0 and settings.scheduler != "lcm"
    guided = round(settings.cfg_cutoff * passes) if guidance else passes
    weights = [1.0 if i < guided else 0.5 for i in range(passes)]
    if settings.cache_interval > 1:
        weights = [w if i % settings.cache_interval == 0 else w / 3 for i, w in enumerate(weights)]
    return weights


@dataclass(frozen=True)
class FirstTile:
    """What the first tile the model drew took: seconds per full network pass (of the batch it was in), and the
    decode (measured, or ``DECODE_PASSES`` passes when the tile was too long to wait for); the tiles of the run
    the model draws (glass and tiles outside tissue counted out), and how many it draws per call."""

    per_pass: float
    decode: float
    model_tiles: int
    per_call: int
    decode_measured: bool


def measure_first_tile(work: Generator[Any, None, Any], engine: Any, settings: GenerationSettings, *,
                       per_call: int) -> Generator[Any, None, FirstTile | tuple[str, Any]]:
    """Pass ``work``'s events on while timing the first tile the model draws (see the module).

    Returns a ``FirstTile``, or ``("done", result)`` when ``work`` ended before (a run of one short tile).
    """
    weights = pass_weights(engine, settings)
    times: list[float] = []
    last: float | None = None
    glass = 0
    while True:
        try:
            event = next(work)
        except StopIteration as stop:
            return "done", stop.value
        yield event
        now = time.perf_counter()
        if isinstance(event, Progress):
            if last is not None and event.step > 1:
                times.append((now - last) / weights[min(event.step, len(weights)) - 1])
            last = now
            model_tiles = event.tiles - glass
            if len(times) >= MEASURE_PASSES - 1:
                per_pass = sorted(times)[len(times) // 2]
                if per_pass * sum(weights) > FIRST_TILE_S:  # too long to wait for: estimate from the passes
                    return FirstTile(per_pass, DECODE_PASSES * per_pass, model_tiles, per_call, False)
        elif getattr(event, "skipped", False):
            glass += 1
        elif hasattr(event, "rgb") and last is not None and times:  # the first model tile is finished
            per_pass = sorted(times)[len(times) // 2]
            return FirstTile(per_pass, now - last, event.tiles - glass, per_call, True)


def estimate_run(engine: Any, first: FirstTile, settings: GenerationSettings, model_tile: int, *,
                 fast: GenerationSettings | None = None, fast_tiles: int | None = None,
                 fast_model_tile: int | None = None) -> RunEstimate:
    """The whole run's seconds from ``first`` (tiles × passes, decode per call); with ``fast``, the same for the
    fast settings (``fast_tiles`` of ``fast_model_tile`` px: the pass and the decode scale with the pixels)."""

    def seconds(s: GenerationSettings, tiles: int, scale: float) -> float:
        calls = -(-tiles // first.per_call)
        return calls * scale * (first.per_pass * sum(pass_weights(engine, s)) + first.decode)

    total = seconds(settings, first.model_tiles, 1.0)
    estimate = RunEstimate(total, first.model_tiles, settings.steps, model_tile, str(engine.device))
    if fast is None:
        return estimate
    scale = ((fast_model_tile or model_tile) / model_tile) ** 2
    quick = seconds(fast, fast_tiles if fast_tiles is not None else first.model_tiles, scale)
    return dataclasses.replace(estimate, fast=fast, fast_seconds=quick)


class RunDecision:
    """The user's answer to "this will take long": go with some settings, or stop (also when the job is cancelled:
    ``cancel``, by default the event of the ``cancel_scope`` the waiting thread runs in)."""

    def __init__(self, cancel: threading.Event | None = None) -> None:
        self.cancel = cancel
        self._answered = threading.Event()
        self._settings: GenerationSettings | None = None

    def go(self, settings: GenerationSettings) -> None:
        self._settings = settings
        self._answered.set()

    def stop(self) -> None:
        self._settings = None
        self._answered.set()

    def wait(self, poll: float = 0.1) -> GenerationSettings | None:
        """Block (in the worker) until answered; None when told to stop or cancelled."""
        cancel = self.cancel or current_cancel()
        while not self._answered.wait(poll):
            if cancel is not None and cancel.is_set():
                return None
        return self._settings
