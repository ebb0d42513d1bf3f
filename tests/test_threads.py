"""Same inputs + same seed = same pixels, in whichever thread generates (issue 15, item 9).

torch.set_num_threads in one thread becomes the count of threads started later, not of threads already
running; CPU pixels depend on the count. Generation pins it (model.threads), so a napari worker thread started
after a dask worker thread set 1 computes exactly what the main thread computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from napari_crafts.generation.region import GenerationSettings, Region, generate_region, run
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.model.threads import default_threads, pinned, torch_threads


def in_new_thread(fn: Callable[[], Any]) -> Any:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", fn()))
    thread.start()
    thread.join()
    return box.get("value")


def test_generation_computes_with_one_thread_count_in_every_thread(engine, nuclei) -> None:  # type: ignore[no-untyped-def]
    import torch

    if default_threads() < 2:
        pytest.skip("one core: every thread count is 1")
    seen: list[int] = []
    hook = engine.unet.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    source = LabelsSource(nuclei[1][:64, :64], name="nuclei", mpp=0.25)
    settings = GenerationSettings(prompt="nuclei", seed=5, steps=1, tile_size=64, overlap=16)

    def generate() -> np.ndarray:
        return run(generate_region(engine, source, Region(0, 0, 64, 64), settings)).rgb

    try:
        reference = generate()
        on_main, seen[:] = list(seen), []
        in_new_thread(lambda: torch.set_num_threads(1))  # a dask worker thread does this: later threads inherit 1
        in_thread = in_new_thread(generate)  # e.g. napari's worker thread, started afterwards
        assert set(on_main) == set(seen) == {default_threads()}
        np.testing.assert_array_equal(in_thread, reference)
        seen.clear()
        with torch_threads(1):  # an explicit count (the whole-slide workers' threads_per_worker) is kept
            generate()
        assert set(seen) == {1}
    finally:
        hook.remove()
        in_new_thread(lambda: torch.set_num_threads(default_threads()))  # what later threads inherit, as before


def test_pinned_passes_values_close_and_errors_through() -> None:
    log: list[Any] = []

    def inner() -> Any:
        try:
            got = yield 1
            log.append(got)
            yield 2
        finally:
            log.append("closed")
        return "done"

    gen = pinned(inner())
    assert next(gen) == 1 and gen.send("hello") == 2
    gen.close()
    assert log == ["hello", "closed"]
    gen = pinned(inner())
    next(gen)
    with pytest.raises(KeyError):
        gen.throw(KeyError("x"))
    assert log[-1] == "closed"
    assert run(pinned(inner())) == "done"
