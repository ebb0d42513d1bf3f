"""The run layer (generation.job): one call from a model choice and a job to a finished, marked result."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_crafts.generation import job as job_module
from napari_crafts.generation.estimate import RunDecision
from napari_crafts.generation.job import ModelChoice, RegionJob, run_job
from napari_crafts.generation.progress import Stage
from napari_crafts.generation.region import GenerationError, Progress, Region, TileDone, generate_region, run
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.model.interrupt import cancel_scope

MPP = 0.5


def test_a_region_job_is_what_generate_region_makes_and_plans_once(
    tiny_model: Path, engine: Any, nuclei: tuple[np.ndarray, np.ndarray], fast: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = nuclei[1][:96, :96]
    source = LabelsSource(labels, name="nuclei", mpp=MPP)
    region = Region(8, 16, 56, 80)
    plans: list[Any] = []
    real_plan = job_module.plan_region
    monkeypatch.setattr(job_module, "plan_region", lambda *a, **k: plans.append(a) or real_plan(*a, **k))
    events: list[Any] = []
    result = run(run_job(ModelChoice(str(tiny_model)), RegionJob(source, region, fast)), events.append)
    direct = run(generate_region(engine, source, region, fast))
    assert np.array_equal(result.rgb, direct.rgb)  # same pixels, same watermark
    assert result.provenance["region"] == direct.provenance["region"] == {"y": 8, "x": 16, "height": 56, "width": 80}
    assert len(plans) == 1  # one plan for the one settings run (the estimate and the run share it)
    shown = [e for e in events if e is not None]
    assert isinstance(shown[0], Stage) and shown[0].text.startswith("model loaded")
    tiles = [e for e in shown if isinstance(e, TileDone)]
    assert len(tiles) > 1 and [t.tiles_done for t in tiles] == list(range(1, len(tiles) + 1))
    assert any(isinstance(e, Progress) for e in shown)


def test_a_prompt_job_is_a_stack_of_images_with_consecutive_seeds(tiny_model: Path, fast: Any) -> None:
    job = RegionJob(None, Region(0, 0, 64, 64), fast, images=2)
    events: list[Any] = []
    result = run(run_job(ModelChoice(str(tiny_model)), job), events.append)
    assert result.rgb.shape == (2, 64, 64, 3)
    assert result.provenance["seeds"] == [fast.seed, fast.seed + 1]
    assert not np.array_equal(result.rgb[0], result.rgb[1])
    planes = {e.plane for e in events if isinstance(e, TileDone)}
    assert planes == {(0,), (1,)}


def test_a_stack_needs_a_prompt_job_and_a_choice_needs_a_model(fast: Any) -> None:
    source = LabelsSource(np.ones((8, 8), np.int32), name="x", mpp=MPP)
    with pytest.raises(ValueError, match="from a prompt alone"):
        RegionJob(source, Region(0, 0, 8, 8), fast, images=2)
    with pytest.raises(GenerationError, match="Choose a model"):
        ModelChoice.chosen("  ")
    assert ModelChoice.chosen("demo").model != "demo" and ModelChoice.chosen("demo").name == "demo"


def test_a_waiting_decision_gives_up_when_the_jobs_scope_is_cancelled() -> None:
    event = threading.Event()
    decision = RunDecision()  # no event of its own: the job's cancel_scope is its cancel channel
    answer: list[Any] = []

    def wait() -> None:
        with cancel_scope(event):
            answer.append(decision.wait(poll=0.01))

    thread = threading.Thread(target=wait)
    thread.start()
    event.set()
    thread.join(5)
    assert answer == [None]


def test_a_job_cancelled_while_the_model_loads_never_reaches_a_tile(
    tiny_model: Path, nuclei: tuple[np.ndarray, np.ndarray], fast: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    monkeypatch.setattr(job_module, "HEAVY_IMPORTS", {"nc_never_imported_module": ()})
    monkeypatch.setattr("importlib.import_module", lambda name: gate.wait(30))
    source = LabelsSource(nuclei[1][:64, :64], name="nuclei", mpp=MPP)
    gen = run_job(ModelChoice(str(tiny_model)), RegionJob(source, Region(0, 0, 64, 64), fast))
    assert next(gen) is None  # the imports' heartbeat: nothing to show yet
    gen.close()  # napari's quit: the job ends at this yield, the import thread is left to finish alone
    gate.set()
    with pytest.raises(StopIteration):
        next(gen)


@pytest.mark.parametrize("answer", ["anyway", "fast", "stop"])
def test_a_long_cpu_run_is_timed_on_its_first_tile_then_goes_on_starts_again_fast_or_stops(
    answer: str, tiny_model: Path, engine: Any, nuclei: tuple[np.ndarray, np.ndarray], fast: Any,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_crafts.generation import estimate
    from napari_crafts.generation.job import Restart
    from napari_crafts.model.interrupt import JobCancelled

    monkeypatch.setattr(estimate, "LONG_RUN_S", 0.0)  # every CPU run is "long" here
    monkeypatch.setattr(estimate, "FIRST_TILE_S", 1e9)  # the first tile is always timed to its end (not the clock's)
    source = LabelsSource(nuclei[1][:64, :64], name="nuclei", mpp=MPP)
    region = Region(0, 0, 64, 40)
    settings = dataclasses.replace(fast, steps=3)
    decision = RunDecision()
    chosen = {"anyway": settings, "fast": estimate.fast_settings(settings, 2), "stop": None}[answer]
    decision.go(chosen) if chosen is not None else decision.stop()  # answered before it is asked: no waiting
    events: list[Any] = []
    gen = run_job(ModelChoice(str(tiny_model)), RegionJob(source, region, settings), decision=decision)
    if answer == "stop":
        with pytest.raises(JobCancelled):
            run(gen, events.append)
    else:
        result = run(gen, events.append)
        direct = run(generate_region(engine, source, region, chosen))
        assert np.array_equal(result.rgb, direct.rgb)  # the same pixels as a run with those settings alone
    (asked,) = [e for e in events if isinstance(e, estimate.RunEstimate)]
    before = events[: events.index(asked)]
    assert [e for e in before if isinstance(e, TileDone) and not e.skipped]  # timed on a real tile, kept
    assert asked.long and asked.fast is not None and asked.fast_seconds < asked.seconds
    assert "timed on the first" in asked.text()
    assert [type(e) for e in events if isinstance(e, Restart)] == ([Restart] if answer == "fast" else [])
