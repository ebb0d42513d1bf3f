"""Exact-mode speed-ups: they change how the networks run, not what they compute."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_crafts.generation.region import GenerationSettings, Region, generate_region, run
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.generation.tiling import noise_field
from napari_crafts.model.engine import UNMEASURED_DECODE_BATCH, Engine, choose_batch, get_engine


def _tiles(engine, n=1):  # type: ignore[no-untyped-def]
    noise = np.stack([noise_field(5, 0, 32 * i, 32, 32) for i in range(n)])
    side = 32 * engine.vae_scale_factor
    control = np.zeros((n, side, side, 3), np.uint8)
    control[:, 10:30, 12:40] = 255
    return noise, control


def test_channels_last_gives_the_same_pixels_and_is_recorded(tiny_model, engine) -> None:  # type: ignore[no-untyped-def]
    fast = get_engine(tiny_model, channels_last=True)
    assert fast is get_engine(tiny_model, channels_last=True)  # cached under its options
    assert get_engine(tiny_model) is not fast  # other options, another engine (one per device: it replaces fast)
    noise, control = _tiles(engine)
    ref = run(engine.generate(noise, control, prompt="x", steps=3))
    out = run(fast.generate(noise, control, prompt="x", steps=3))
    assert np.abs(out.astype(int) - ref).max() <= 2  # other conv kernels: last-bit differences only
    assert fast.describe()["channels_last"] is True and engine.describe()["channels_last"] is False


@pytest.mark.slow
def test_compiled_engine_gives_the_same_pixels(tiny_model, engine) -> None:  # type: ignore[no-untyped-def]
    compiled = Engine(tiny_model, compile=True)
    noise, control = _tiles(engine)
    ref = run(engine.generate(noise, control, prompt="x", steps=2))
    out = run(compiled.generate(noise, control, prompt="x", steps=2))  # the first call compiles
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert compiled.describe()["compile"] is True


def test_decoding_several_tiles_per_call_matches_one_at_a_time(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    noise, control = _tiles(engine, 3)
    one = run(engine.generate(noise, control, prompt="x", steps=2))
    monkeypatch.setattr(Engine, "decode_batch", lambda self, tile_px: 2)  # chunks of 2 and 1
    two = run(engine.generate(noise, control, prompt="x", steps=2))
    assert np.abs(two.astype(int) - one).max() <= 1


def test_choose_batch_shares_free_memory_out() -> None:
    gib = 2**30
    assert choose_batch(10 * gib, gib) == 9  # 10 % kept in reserve
    assert choose_batch(10 * gib, gib, cap=4) == 4
    assert choose_batch(gib // 2, gib) == 1  # never below one tile (OOM halving takes over)
    assert choose_batch(10 * gib, 0, cap=6) == 6


def test_auto_batch_is_one_on_cpu_and_measured_once_per_tile_size_on_cuda(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert engine.auto_batch(128) == 1  # CPU: batching does not pay
    probes = []

    def probe(what, nbytes):  # type: ignore[no-untyped-def]
        return lambda tile_px, *flags: probes.append((what, tile_px)) or nbytes * tile_px * 2**20

    monkeypatch.setattr(engine, "device", "cuda")
    monkeypatch.setattr(engine, "_probe_step_bytes", probe("step", 1))
    monkeypatch.setattr(engine, "_probe_decode_bytes", probe("decode", 3))
    monkeypatch.setattr(engine, "_free_bytes", lambda: 10 * 2**30)
    assert engine.decode_batch(512) == UNMEASURED_DECODE_BATCH  # nothing measured yet
    assert engine.auto_batch(512) == 16  # 9 GiB / 0.5 GiB = 18, capped at 16
    assert engine.decode_batch(512) == 6  # 9 GiB / 1.5 GiB
    monkeypatch.setattr(engine, "_free_bytes", lambda: 2 * 2**30)  # other programs took memory
    assert engine.auto_batch(512) == 3 and engine.decode_batch(512) == 1
    assert engine.auto_batch(512, guidance=False) == 3
    # measured once per tile size (the step also per CFG/ControlNet); the free memory is asked each time
    assert probes == [("step", 512), ("decode", 512), ("step", 512)]


def test_auto_batch_size_drives_generate_region(engine, nuclei, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    labels = nuclei[1][:192, :192]
    calls, sizes = [], []
    monkeypatch.setattr(engine, "auto_batch", lambda tile_px, **kw: calls.append((tile_px, kw)) or 3)
    real = engine.generate

    def spy(noise, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(noise))
        return real(noise, *args, **kwargs)

    monkeypatch.setattr(engine, "generate", spy)
    settings = GenerationSettings(steps=1, tile_size=64, overlap=16, prompt="x", batch_size=0, skip_empty=False)
    result = run(generate_region(engine, LabelsSource(labels, name="n", mpp=0.25), Region(0, 0, 192, 192), settings))
    assert calls[0] == (64, {"guidance": True, "control": True})
    assert sizes[:-1] == [3] * (len(sizes) - 1) and sum(sizes) == result.tiles_generated
    assert result.provenance["tiles_per_call"] == 3 and result.provenance["batch_size"] == 0
    fixed, asked = dataclasses.replace(settings, batch_size=2), len(calls)
    sizes.clear()
    run(generate_region(engine, LabelsSource(labels, name="n", mpp=0.25), Region(0, 0, 192, 192), fixed))
    assert max(sizes) == 2 and len(calls) == asked  # an explicit batch size is used as given
