import dataclasses

import numpy as np
import pytest

from napari_crafts.generation.region import (
    BACKGROUND_RGB,
    GenerationError,
    Progress,
    Region,
    TileDone,
    generate_region,
    plan_region,
    run,
)
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.generation.tiling import seam_score


def _events(gen):
    events = []
    result = run(gen, events.append)
    return result, events


def test_region_is_generated_tile_by_tile_with_provenance(engine, nuclei, fast):
    _, lab = nuclei
    src = LabelsSource(lab, name="nuclei", mpp=0.25)
    result, events = _events(generate_region(engine, src, Region(64, 32, 120, 100), fast))
    assert result.rgb.shape == (120, 100, 3) and result.rgb.dtype == np.uint8
    tiles = [e for e in events if isinstance(e, TileDone)]
    steps = [e for e in events if isinstance(e, Progress)]
    assert len(tiles) == 6 and tiles[-1].tiles_done == tiles[-1].tiles == 6  # 3 rows × 2 columns, stride 48
    assert len(steps) == 6 * 3  # PNDM turns 2 requested steps into 3 model calls; one Progress each
    p = result.provenance
    assert p["synthetic"] is True and "SYNTHETIC" in p["warning"]
    assert p["model"]["weights_sha256"] == engine.weights_sha256
    assert (p["prompt"], p["seed"], p["steps"], p["guidance_scale"]) == ("nuclei", 7, 2, 7.5)
    assert p["region"] == {"y": 64, "x": 32, "height": 120, "width": 100}
    assert p["version"] and p["mode"] == "labels"


def test_same_seed_same_region_same_pixels(engine, nuclei, fast):
    src = LabelsSource(nuclei[1], name="nuclei", mpp=0.25)
    a = run(generate_region(engine, src, Region(0, 0, 100, 100), fast)).rgb
    b = run(generate_region(engine, src, Region(0, 0, 100, 100), fast)).rgb
    c = run(generate_region(engine, src, Region(0, 0, 100, 100), dataclasses.replace(fast, seed=8))).rgb
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seams_across_tile_borders_stay_below_interior_variation(engine, nuclei, fast):
    src = LabelsSource(nuclei[1], name="nuclei", mpp=0.25)
    region = Region(0, 0, 200, 200)
    settings = dataclasses.replace(fast, overlap=24)
    result = run(generate_region(engine, src, region, settings))
    border, interior = seam_score(result.rgb, plan_region(src, region, engine, settings).grid)
    assert border < 1.1 * interior  # steps across tile edges within 10% of the texture's own (tiny model: ~1.06)
    # (tests/test_tiling.py shows the same score flags a real seam)


def test_glass_tiles_are_filled_without_the_model(engine, fast):
    lab = np.zeros((128, 256), np.uint16)
    lab[10:30, 10:30] = 1  # only the first tile holds a nucleus, and only it is tissue
    tissue = np.zeros((128, 256), bool)
    tissue[:56, :56] = True
    src = LabelsSource(lab, name="sparse", mpp=0.25, tissue=tissue)
    # unmarked: the watermark would put its faint pattern on the filled glass
    result, events = _events(generate_region(engine, src, Region(0, 0, 128, 256), dataclasses.replace(fast, overlap=0),
                                             watermark=False))
    skipped = [e for e in events if isinstance(e, TileDone) and e.skipped]
    assert result.tiles_skipped == len(skipped) == 7 and result.tiles_generated == 1  # 2×4 tiles, one nucleus
    assert (result.rgb[64:, 64:] == BACKGROUND_RGB).all()
    assert result.provenance["tiles_skipped_empty"] == 7


def test_pixel_size_is_honoured_and_output_keeps_the_source_grid(engine, nuclei, fast):
    src = LabelsSource(nuclei[1], name="nuclei", mpp=0.5)  # half the model's resolution: tiles upsampled ×2
    plan = plan_region(src, Region(0, 0, 100, 100), engine, fast)
    assert plan.factor == 2.0 and plan.model_tile == 64 and plan.grid.tile == 32 and plan.grid.overlap == 8
    result = run(generate_region(engine, src, Region(0, 0, 100, 100), fast))
    assert result.rgb.shape == (100, 100, 3) and result.provenance["scale_factor"] == 2.0
    unknown = LabelsSource(nuclei[1], name="nuclei")
    assert "no pixel size" in plan_region(unknown, Region(0, 0, 100, 100), engine, fast).notes[0]


def test_bad_regions_and_empty_labels_are_refused(engine, nuclei, fast):
    src = LabelsSource(nuclei[1], name="nuclei", mpp=0.25)
    with pytest.raises(GenerationError, match=r"outside 'nuclei' \(512×512 px\)"):
        run(generate_region(engine, src, Region(500, 0, 100, 100), fast))
    empty = LabelsSource(np.zeros((64, 64), np.uint8), name="blank")
    with pytest.raises(GenerationError, match="'blank' is empty.*paint or load nuclei"):
        run(generate_region(engine, empty, Region(0, 0, 64, 64), fast))


def test_out_of_memory_halves_the_batch_then_explains(engine, nuclei, fast, monkeypatch):
    import torch

    src = LabelsSource(nuclei[1], name="nuclei", mpp=0.25)
    region = Region(0, 0, 100, 100)
    # unmarked: the record (so the watermark's payload) names the batch size, the pixels must not
    reference = run(generate_region(engine, src, region, fast, watermark=False)).rgb
    real = type(engine).generate
    calls = []

    def flaky(self, noise, *a, **k):
        calls.append(len(noise))
        if len(noise) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return (yield from real(self, noise, *a, **k))

    monkeypatch.setattr(type(engine), "generate", flaky)
    monkeypatch.setattr(engine, "_batch_caps", {})  # what this test teaches the shared engine is undone after
    out = run(generate_region(engine, src, region, dataclasses.replace(fast, batch_size=4), watermark=False)).rgb
    np.testing.assert_array_equal(out, reference)
    assert calls[:3] == [4, 2, 1] and set(calls[3:]) == {1}  # later chunks start from the batch that fitted

    def always(self, noise, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        yield

    monkeypatch.setattr(type(engine), "generate", always)
    with pytest.raises(GenerationError, match="Out of GPU memory at batch size 1"):
        run(generate_region(engine, src, region, fast))


def test_prompt_only_region(engine, fast):
    result = run(generate_region(engine, None, Region(0, 0, 64, 64), fast))
    assert result.rgb.shape == (64, 64, 3) and result.provenance["mode"] == "prompt"
