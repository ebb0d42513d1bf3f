"""How long a run will take, said before it starts; and the fast settings to offer when that is long (Qt-free).

On a CPU a default run (50 steps, 512-px tiles) can take many minutes per tile. ``estimate_run`` times one
network pass at one or two small tile sizes (once per engine and size; a real run's measured speed replaces
it), extrapolates to the run's tile size, and multiplies by the passes the run needs. It is an estimate: it
says so, and the widgets show the measured remaining time once the run goes.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..model.interrupt import JobCancelled, current_cancel
from .progress import Stage, format_duration
from .region import GenerationSettings, Plan, Progress

#: A CPU run estimated longer than this (seconds) is offered the fast settings before it starts.
LONG_RUN_S = 120.0
#: Tile sizes (model px) the speed is measured at when the run's own tile is larger.
PROBE_PX = (64, 128)
#: Runs of at most this many network passes of a 64-px tile (tiles × passes × (tile/64)²) are not estimated.
SMALL_RUN = 100
#: Fast settings for a CPU: fewer steps with a multistep scheduler, guidance for the first half only, feature
#: reuse. Approximate (recorded as such in the provenance, and the layer name says so).
FAST_SETTINGS = GenerationSettings(scheduler="unipc", steps=10, cfg_cutoff=0.5, cache_interval=2)
#: Tiles whose latents are larger than SD's own 64² are made smaller by the fast settings (the tiny model's 2×
#: autoencoder: 128 px); at 64² they stay (an 8× autoencoder's 512 px: smaller tiles would cost more tiles and
#: overlap for less fidelity: measured with the demo model, docs/demo_model.md).
FAST_LATENT_SIDE = 64

# (engine id, tile px, control, guidance) → (seconds per network pass, seconds per tile decode)
_SPEED: dict[tuple[int, int, bool, bool], tuple[float, float]] = {}
_LOCK = threading.Lock()


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
                f"{self.steps} steps at {self.model_tile} px)")

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


def estimate_run(engine: Any, plan: Plan, settings: GenerationSettings, *, control: bool,
                 tiles: int | None = None) -> RunEstimate:
    """The expected seconds of rendering ``tiles`` (default: every tile of ``plan``) with ``settings``."""
    n = len(plan.grid) if tiles is None else tiles
    guidance = settings.guidance_scale > 1.0 and settings.scheduler != "lcm"  # lcm: the student, no CFG
    per_pass, decode = speed(engine, plan.model_tile, control=control, guidance=guidance, prompt=settings.prompt)
    passes = network_passes(engine, settings)
    guided = round(settings.cfg_cutoff * passes) if guidance else 0
    # unguided passes run half the batch; a shallow (feature-reuse) pass is taken as a third of a full one
    weights = [(1.0 if i < guided or not guidance else 0.5) for i in range(passes)]
    if settings.cache_interval > 1:
        weights = [w if i % settings.cache_interval == 0 else w / 3 for i, w in enumerate(weights)]
    seconds = n * (per_pass * sum(weights) + decode)
    return RunEstimate(seconds, n, settings.steps, plan.model_tile, str(engine.device))


def record_speed(engine: Any, tile_px: int, seconds_per_pass: float, *, control: bool, guidance: bool) -> None:
    """Keep the speed a real run measured, for the next estimate (replaces a probe's)."""
    with _LOCK:
        old = _SPEED.get((id(engine), tile_px, control, guidance))
        _SPEED[(id(engine), tile_px, control, guidance)] = (seconds_per_pass, old[1] if old else 0.0)


def speed(engine: Any, tile_px: int, *, control: bool, guidance: bool, prompt: str = "") -> tuple[float, float]:
    """(seconds per network pass, seconds per tile decode) at ``tile_px``: measured, or extrapolated."""
    key = (id(engine), tile_px, control, guidance)
    with _LOCK:
        if key in _SPEED:
            return _SPEED[key]
    if tile_px <= PROBE_PX[-1]:
        measured = _probe(engine, tile_px, control, guidance, prompt)
    else:
        (p0, d0), (p1, d1) = (speed(engine, px, control=control, guidance=guidance, prompt=prompt)
                              for px in _probe_sizes(engine))
        ratio = (tile_px / _probe_sizes(engine)[1]) ** 2  # pixels
        # convolutions scale with the pixels, attention faster: the exponent measured between the probes, ≥ 1
        grow = math.log(max(p1, 1e-9) / max(p0, 1e-9)) / math.log(4.0)
        measured = (p1 * ratio ** min(2.0, max(1.0, grow)), d1 * ratio)
    with _LOCK:
        _SPEED.setdefault(key, measured)
        return _SPEED[key]


def _probe_sizes(engine: Any) -> tuple[int, int]:
    m = int(engine.size_multiple)
    small = max(m, PROBE_PX[0] // m * m)
    return small, 2 * small


def _probe(engine: Any, px: int, control: bool, guidance: bool, prompt: str) -> tuple[float, float]:
    """Time one network pass (the second of two DDIM steps: the first pays one-off set-up costs) and one decode
    of a ``px`` tile."""
    import numpy as np

    latent = px // engine.vae_scale_factor
    noise = np.zeros((1, 4, latent, latent), np.float32)
    image = np.zeros((1, px, px, 3), np.uint8) if control else None
    engine.encode_prompt(prompt)  # the run encodes it too; keep it out of the timing
    gen = engine.generate(noise, image, prompt=prompt, steps=2, scheduler="ddim",
                          guidance_scale=7.5 if guidance else 1.0)
    next(gen)
    t0 = time.perf_counter()
    next(gen)
    t1 = time.perf_counter()
    for _ in gen:  # the decode runs when the generator finishes
        pass
    return t1 - t0, time.perf_counter() - t1


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


def is_small(plan: Plan, passes: int, tiles: int) -> bool:
    """Too little work to be worth measuring the speed for (see ``SMALL_RUN``)."""
    return tiles * passes * (plan.model_tile / 64) ** 2 <= SMALL_RUN


def settings_to_run(engine: Any, plan_for: Callable[[GenerationSettings], Plan], settings: GenerationSettings, *,
                    control: bool, copies: int = 1, decision: RunDecision | None = None
                    ) -> Generator[Stage | RunEstimate, None, GenerationSettings]:
    """On a CPU, estimate the run (yields the ``RunEstimate``) and, when it is long, wait for ``decision``.

    ``plan_for(settings)`` plans the region; ``copies`` images of it are made. Returns the settings to run with
    (the user may pick the fast ones); raises JobCancelled when the user declines. Small runs and GPU runs go
    ahead without asking.
    """
    plan = plan_for(settings)
    n = len(plan.grid) * copies
    if decision is None or str(engine.device) != "cpu" or is_small(plan, network_passes(engine, settings), n):
        return settings
    yield Stage("estimating how long this run takes…")
    estimate = estimate_run(engine, plan, settings, control=control, tiles=n)
    fast = fast_settings(settings, int(engine.vae_scale_factor), student=bool(engine.card.student))
    fast_plan = plan_for(fast)
    quick = estimate_run(engine, fast_plan, fast, control=control, tiles=len(fast_plan.grid) * copies)
    estimate = dataclasses.replace(estimate, fast=fast, fast_seconds=quick.seconds)
    yield estimate
    if not estimate.long:
        return settings
    chosen = decision.wait()
    if chosen is None:
        raise JobCancelled("not started")
    return chosen


def measured(gen: Generator[Any, None, Any], engine: Any, tile_px: int, *, control: bool,
             guidance: bool) -> Generator[Any, None, Any]:
    """Pass ``gen``'s events through, timing the network passes; their mean speed is kept for later estimates."""
    times: list[float] = []
    last: tuple[float, int, int] | None = None
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(event, Progress):
                now = time.perf_counter()
                if last is not None and last[1:] == (event.tiles_done, event.step - 1):
                    times.append(now - last[0])
                last = (now, event.tiles_done, event.step)
            yield event
    finally:
        if times:
            record_speed(engine, tile_px, sum(times) / len(times), control=control, guidance=guidance)
