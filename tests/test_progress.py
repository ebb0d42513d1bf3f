"""The Qt-free core behind the viewer workflow: progress text and time left, run estimates and fast settings,
cancel inside a step, the model catalog, a layer's pixel size."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest

from napari_crafts.generation.estimate import RunDecision, RunEstimate, fast_settings
from napari_crafts.generation.progress import ProgressClock, format_duration, shown_step
from napari_crafts.generation.region import GenerationSettings, Progress, TileDone
from napari_crafts.io.pixel_size import pixel_size
from napari_crafts.model.interrupt import JobCancelled, cancel_scope, make_interruptible


def test_progress_text_counts_steps_as_asked_and_says_the_time_left():
    clock = ProgressClock(steps=2)
    # PNDM makes 3 network passes for 2 steps: shown as steps 1, 1, 2 of 2, never "3/2"
    assert [shown_step(s, 3, 2) for s in (1, 2, 3)] == [1, 1, 2]
    assert clock.update(Progress(0, 9, 1, 3), now=10.0) == "tile 1/9 · step 1/2"
    assert clock.update(Progress(0, 9, 2, 3), now=12.0) == "tile 1/9 · step 1/2 · about 50 s left"  # 25 passes × 2 s
    assert clock.update(Progress(4, 9, 3, 3), now=40.0) == "tile 5/9 · step 2/2 · about 26 s left"
    stack = ProgressClock(steps=50, images=2)
    assert stack.where(0, 2) == "image 1/2" and stack.where(1, 2) == "image 2/2"
    assert stack.where(5, 8) == "image 2/2, tile 2/4"
    assert [format_duration(s) for s in (0.2, 59.5, 61, 3600, 7300)] == ["1 s", "1 min", "2 min", "1 h", "2 h 2 min"]


@dataclass
class FakeEngine:
    """What the estimate reads of an Engine: device, tile rules, its scheduler."""

    device: str = "cpu"
    size_multiple: int = 8
    vae_scale_factor: int = 8
    mpp: float = 0.25

    def make_scheduler(self, name: str):  # noqa: ANN201
        from diffusers import DDIMScheduler, PNDMScheduler, UniPCMultistepScheduler

        cls = {"default": PNDMScheduler, "unipc": UniPCMultistepScheduler, "ddim": DDIMScheduler}[name]
        return cls(skip_prk_steps=True) if cls is PNDMScheduler else cls()


def first_tile_events(glass: int, tiles: int, passes: int) -> list[tuple[float, object]]:
    """(seconds after the last event, event) of a run's start: ``glass`` glass tiles, then the first model tile:
    its first pass 5 s (set-up), then 2 s a pass, then a 3-s decode."""
    events: list[tuple[float, object]] = [(0.0, TileDone(i + 1, tiles, (0, 0, 1, 1), None, skipped=True))
                                          for i in range(glass)]
    events += [(5.0 if k == 1 else 2.0, Progress(glass, tiles, k, passes)) for k in range(1, passes + 1)]
    return [*events, (3.0, TileDone(glass + 1, tiles, (0, 0, 1, 1), None))]


def timed(events: list[tuple[float, object]], clock: list[float]):  # noqa: ANN201
    """A run's generator whose events arrive after the given seconds of the (patched) clock."""
    for dt, event in events:
        clock[0] += dt
        yield event
    return "result"


def test_a_run_is_estimated_from_its_own_first_tile_and_the_fast_settings_are_faster(monkeypatch):
    from napari_crafts.generation import estimate

    clock = [100.0]
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: clock[0])
    engine, settings = FakeEngine(), GenerationSettings(steps=5, scheduler="ddim")  # 5 DDIM passes
    monkeypatch.setattr(estimate, "FIRST_TILE_S", 60.0)
    seen: list[object] = []
    gen = estimate.measure_first_tile(timed(first_tile_events(2, 11, 5), clock), engine, settings, per_call=1)
    with pytest.raises(StopIteration) as done:
        while True:
            seen.append(next(gen))
    first = done.value.value
    assert len(seen) == 2 + 5 + 1  # every event passed on
    # 2 s a pass (the first, with its set-up, left out); the 3-s decode timed; glass counted out: 9 model tiles
    assert (first.per_pass, first.decode, first.model_tiles, first.decode_measured) == (2.0, 3.0, 9, True)
    est = estimate.estimate_run(engine, first, settings, 512)
    assert est.seconds == pytest.approx(9 * (5 * 2.0 + 3.0)) and est.tiles == 9
    assert est.text() == "about 2 min on the CPU (9 tiles × 5 steps at 512 px, timed on the first)"
    fast = fast_settings(GenerationSettings())
    assert (fast.scheduler, fast.steps, fast.cfg_cutoff, fast.cache_interval, fast.tile_size, fast.overlap) == (
        "unipc", 10, 0.5, 2, 512, GenerationSettings().overlap) and not fast.exact  # 8× autoencoder: 64² latents
    assert fast_settings(GenerationSettings(steps=4, tile_size=128, overlap=8)).steps == 4  # never more work
    assert fast_settings(GenerationSettings(), vae_scale_factor=2).tile_size == 128  # a 2× autoencoder: 64² latents
    both = estimate.estimate_run(engine, first, GenerationSettings(), 512, fast=fast, fast_tiles=9, fast_model_tile=256)
    # exact: PNDM's 51 passes; fast: 10 UniPC passes, half unguided (0.5), every other one shallow (a third), and
    # a quarter of the pixels per pass and decode (256-px tiles)
    assert both.seconds == pytest.approx(9 * (51 * 2.0 + 3.0))
    fast_passes = 3 * 1 + 2 * (1 / 3) + 2 * 0.5 + 3 * (0.5 / 3)
    assert both.fast_seconds == pytest.approx(9 * 0.25 * (fast_passes * 2.0 + 3.0))
    assert both.fast_text().startswith("UniPC, 10 steps, guidance for the first 50%, feature reuse, 512-px tiles")
    assert RunEstimate(30.0, 1, 10, 256, "cuda").long is False  # only CPU runs are asked about


def test_a_long_first_tile_is_estimated_from_its_first_passes_and_a_short_run_just_ends(monkeypatch):
    from napari_crafts.generation import estimate

    clock = [0.0]
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: clock[0])
    engine, settings = FakeEngine(), GenerationSettings(steps=50, scheduler="ddim")  # 50 × 2 s > FIRST_TILE_S
    gen = estimate.measure_first_tile(timed(first_tile_events(0, 4, 50), clock), engine, settings, per_call=2)
    seen = []
    with pytest.raises(StopIteration) as done:
        while True:
            seen.append(next(gen))
    first = done.value.value
    assert len(seen) == estimate.MEASURE_PASSES  # it did not wait for the tile's 50 passes
    assert (first.per_pass, first.decode, first.decode_measured) == (2.0, estimate.DECODE_PASSES * 2.0, False)
    assert estimate.estimate_run(engine, first, settings, 512).seconds == pytest.approx(2 * (50 * 2.0 + 4.0))
    gen = estimate.measure_first_tile(timed(first_tile_events(0, 1, 1), clock), engine, settings, per_call=1)
    with pytest.raises(StopIteration) as done:
        while True:
            next(gen)
    assert done.value.value == ("done", "result")  # a one-pass run ended before it could be timed


def test_a_waiting_decision_is_answered_or_cancelled():
    decision = RunDecision()
    decision.go(fast_settings(GenerationSettings()))
    assert decision.wait().scheduler == "unipc"
    cancel = threading.Event()
    cancel.set()
    assert RunDecision(cancel).wait(poll=0.01) is None
    stopped = RunDecision()
    stopped.stop()
    assert stopped.wait() is None


def test_cancel_interrupts_a_network_inside_a_step_only_in_its_own_thread():
    import torch

    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.nn.Sequential(torch.nn.Linear(4, 4)))
    make_interruptible(net)
    make_interruptible(net)  # once: hooks are not stacked
    calls: list[int] = []
    net[1].register_forward_pre_hook(lambda m, a: calls.append(1))
    event = threading.Event()
    x = torch.zeros(1, 4)
    with cancel_scope(event):
        net(x)
        event.set()
        other: list[object] = []
        worker = threading.Thread(target=lambda: other.append(net(x)))  # another thread: not cancelled
        worker.start()
        worker.join()
        assert len(other) == 1
        with pytest.raises(JobCancelled):
            net(x)
    net(x)  # outside the scope: runs
    assert len(calls) == 3


def test_the_catalog_lists_models_of_this_install(tmp_path, monkeypatch):
    from napari_crafts.model import catalog

    monkeypatch.setenv("NAPARI_CRAFTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--org--crafts" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    mine = tmp_path / "cache" / "models" / "lung"
    mine.mkdir(parents=True)
    (mine / "model_index.json").write_text("{}")
    (mine / "napari_crafts.json").write_text(json.dumps({"mpp": 0.5}))
    used = tmp_path / "trained"
    used.mkdir()
    catalog.remember_model(str(used))
    catalog.remember_model("org/other")
    refs = [(e.ref, e.origin) for e in catalog.known_models()]
    assert refs[refs.index(("tiny-demo", "tiny")) + 1 :] == [
        ("org/other", "recent"), (str(used), "recent"), (str(mine), "cache"), ("org/crafts", "hub-cache")]
    assert catalog.model_mpp(str(mine)) == 0.5 and catalog.model_mpp("tiny-demo") == 0.25
    used.rmdir()
    assert str(used) not in catalog.recent_models()  # a folder that is gone is not offered


def test_a_layers_pixel_size_and_where_it_came_from():
    assert pixel_size(recorded=0.2527) == pixel_size(recorded=0.2527, scale=9.0, unit="nm")
    assert pixel_size(recorded=0.5, recorded_by="user").origin == "set in Pixel size"
    assert pixel_size(scale=250.0, unit="nanometer").mpp == pytest.approx(0.25)
    beside = pixel_size(scale=0.499, unit="pixel", world_in_um="CMU-1")
    assert beside.mpp == 0.499 and beside.origin == "from the layer's scale (µm, as 'CMU-1')"
    assert not pixel_size(scale=1.0, unit="pixel", world_in_um="CMU-1").known  # napari's default scale says nothing
    assert not pixel_size(scale=0.499, unit="pixel").known
