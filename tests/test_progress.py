"""The Qt-free core behind the viewer workflow: progress text and time left, run estimates and fast settings,
cancel inside a step, the model catalog, a layer's pixel size."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest

from napari_crafts.generation.estimate import (
    _SPEED,
    RunDecision,
    RunEstimate,
    estimate_run,
    fast_settings,
    settings_to_run,
    speed,
)
from napari_crafts.generation.progress import ProgressClock, format_duration, shown_step
from napari_crafts.generation.region import GenerationSettings, Progress, Region, plan_region
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


def test_a_run_is_estimated_from_the_measured_speed_and_the_fast_settings_are_faster():
    engine = FakeEngine()
    _SPEED[(id(engine), 512, True, True)] = (10.0, 2.0)  # 10 s per pass and 2 s per decode at 512 px
    settings = GenerationSettings()
    plan = plan_region(None, Region(0, 0, 1024, 1024), engine, settings)
    est = estimate_run(engine, plan, settings, control=True)
    assert est.tiles == 9 and est.seconds == pytest.approx(9 * (51 * 10.0 + 2.0))  # PNDM: 51 passes for 50 steps
    assert est.long and est.text() == "about 1 h 17 min on the CPU (9 tiles × 50 steps at 512 px)"
    fast = fast_settings(settings)
    assert (fast.scheduler, fast.steps, fast.cfg_cutoff, fast.cache_interval, fast.tile_size, fast.overlap) == (
        "unipc", 10, 0.5, 2, 512, settings.overlap) and not fast.exact  # an 8× autoencoder keeps its 64² latents
    assert fast_settings(GenerationSettings(steps=4, tile_size=128, overlap=8)).steps == 4  # never more work
    assert fast_settings(settings, vae_scale_factor=2).tile_size == 128  # a 2× autoencoder: 64² latents
    # 256 px is extrapolated from the probes at 64 and 128 px (here: pixels × 4 per doubling, attention-like)
    _SPEED[(id(engine), 64, True, True)] = (0.1, 0.01)
    _SPEED[(id(engine), 128, True, True)] = (0.4, 0.04)
    per_pass, decode = speed(engine, 256, control=True, guidance=True)
    assert per_pass == pytest.approx(1.6) and decode == pytest.approx(0.16)
    assert RunEstimate(30.0, 1, 10, 256, "cuda").long is False  # only CPU runs are asked about


def test_a_long_run_waits_for_the_answer_and_cancel_ends_the_wait():
    engine = FakeEngine()
    for px, speeds in ((512, (10.0, 2.0)), (256, (1.0, 0.5))):  # measured before (no probe here)
        _SPEED[(id(engine), px, True, True)] = speeds
    settings = GenerationSettings()
    decision = RunDecision()
    gen = settings_to_run(engine, lambda s: plan_region(None, Region(0, 0, 512, 512), engine, s), settings,
                          control=True, decision=decision)
    assert next(gen).text.startswith("estimating")
    estimate = next(gen)
    assert isinstance(estimate, RunEstimate) and estimate.fast == fast_settings(settings)
    # 10 UniPC passes, half unguided, every other one shallow: 5.2 full passes + a decode, against 51 + a decode
    # (512-px tiles stay: 10 s a pass). Passes 0-4 guided, 5-9 half batch (0.5); odd ones shallow (a third)
    assert estimate.fast_seconds == pytest.approx(10.0 * (3 * 1 + 2 * (1 / 3) + 2 * 0.5 + 3 * (0.5 / 3)) + 2.0)
    assert estimate.fast_text().startswith("UniPC, 10 steps, guidance for the first 50%, feature reuse, 512-px tiles")
    decision.go(fast_settings(settings))
    with pytest.raises(StopIteration) as done:
        next(gen)
    assert done.value.value.scheduler == "unipc"
    cancel = threading.Event()
    gen = settings_to_run(engine, lambda s: plan_region(None, Region(0, 0, 512, 512), engine, s), settings,
                          control=True, decision=RunDecision(cancel))
    next(gen), next(gen)
    cancel.set()
    with pytest.raises(JobCancelled):
        next(gen)


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
