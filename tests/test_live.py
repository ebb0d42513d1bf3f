"""Live paint (generation.live): an edit of the labels regenerates only the tiles under it, and the result is
byte-identical to a fresh full run on the edited labels."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from napari_crafts._generators import run
from napari_crafts._widgets._text import LIVE_TEXT
from napari_crafts.export.watermark import record_hash
from napari_crafts.generation.live import LIVE_KEY, regenerate, start_live
from napari_crafts.generation.region import GenerationError, Region, generate_region
from napari_crafts.generation.sources import LabelsSource
from napari_crafts.io.windows import WindowedArray

MPP = 0.25  # the tiny model's pixel size: source px = model px
#: Record keys that differ between two runs of the same pixels (when, and the live history).
VARYING = {"created", LIVE_KEY}


@dataclass
class EchoEngine:
    """A fast stand-in for the model: a tile's image is its control image plus its starting noise (so it follows
    the labels and differs by position); the live logic under test is the same whatever draws the tiles."""

    size_multiple: int = 8
    vae_scale_factor: int = 2
    mpp: float = MPP

    def generate(self, noise: np.ndarray, control: Any = None, **_: Any) -> Any:
        from napari_crafts.model.engine import Step

        yield Step(1, 1)
        wiggle = np.repeat(np.repeat(noise[:, :3], 2, axis=2), 2, axis=3).transpose(0, 2, 3, 1)
        return np.clip(96 + 0.5 * control.astype(np.float32) + 20 * wiggle, 0, 255).astype(np.uint8)

    def auto_batch(self, tile_px: int, **_: Any) -> int:
        return 1

    def batch_cap(self, tile_px: int, **_: Any) -> None:
        return None

    def cap_batch(self, tile_px: int, batch: int, **_: Any) -> None:
        pass

    def describe(self, controlnet: Any = None, mode: Any = "labels") -> dict[str, Any]:
        return {"name": "echo"}

    def truncated_tokens(self, prompt: str) -> list[str]:
        return []


class RecordingLabels(WindowedArray):
    """A lazy labels array that notes every window read (y, x, height, width)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.reads: list[tuple[int, int, int, int]] = []

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        self.reads.append((y, x, height, width))
        return self.data[y : y + height, x : x + width]


def fresh(engine: Any, labels: np.ndarray, region: Region, settings: Any, tissue: Any = "auto") -> Any:
    source = LabelsSource(labels.copy(), name="nuclei", mpp=MPP, tissue=tissue)
    return run(generate_region(engine, source, region, settings))


def same_record(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert {k: v for k, v in a.items() if k not in VARYING} == {k: v for k, v in b.items() if k not in VARYING}


def changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero((before != after).any(axis=-1))
    return None if ys.size == 0 else (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)


def start(engine: Any, labels: Any, side: int, settings: Any, tissue: Any = "auto") -> Any:
    source = LabelsSource(labels, name="nuclei", mpp=MPP, tissue=tissue)
    return run(start_live(engine, source, Region(0, 0, side, side), settings))


def footprint(tiles: list[Any]) -> tuple[int, int, int, int]:
    return (
        min(t.y for t in tiles),
        min(t.x for t in tiles),
        max(t.y + t.size for t in tiles),
        max(t.x + t.size for t in tiles),
    )


def test_edits_with_the_model_equal_a_fresh_run(engine: Any, nuclei: Any, fast: Any) -> None:
    """With the tiny model: paint a nucleus, paint across the corner of four tiles, erase a nucleus. Each edit
    regenerates only the tiles that read it and reads only their windows; pixels away from them do not change; after
    the three edits the pixels and the record are a fresh full run's on the edited labels, byte for byte."""
    settings = dataclasses.replace(fast, steps=1)
    labels = RecordingLabels(nuclei[1][:96, 16:112].astype(np.int32))  # 64-px tiles, 48-px stride: 2 × 2 tiles
    live = start(engine, labels, 96, settings)
    grid = live.plan.grid
    inside = (
        set(np.unique(labels.data[66:, 66:])) - set(np.unique(labels.data[:66])) - set(np.unique(labels.data[:, :66]))
    )
    gone = int(max(inside))  # a nucleus that lies in the last tile alone
    ys, xs = np.nonzero(labels.data == gone)
    edits = [(4, 4, 12, 12), (44, 44, 52, 52), (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)]
    for i, (y0, x0, y1, x1) in enumerate(edits):
        before = live.rgb
        labels.reads.clear()
        if i < 2:
            labels.data[y0:y1, x0:x1] = 900 + i
        else:
            labels.data[labels.data == gone] = 0
        update = run(regenerate(live, labels, (y0, x0, y1, x1)))
        tiles = grid.tiles_touching(y0 - 1, x0 - 1, y1 + 1, x1 + 1)  # a tile reads one pixel around its window
        assert update.tiles == len(tiles) == [1, 4, 1][i]
        assert update.box != (0, 0, 0, 0) and np.array_equal(
            live.rgb[update.box[0] : update.box[2], update.box[1] : update.box[3]], update.rgb
        )
        fy0, fx0, fy1, fx1 = footprint(tiles)
        moved = changed_box(before, live.rgb)
        assert moved is not None  # the edit shows
        # the blend changes inside the regenerated tiles; the watermark's 4-px cells reach 3 cells beyond
        assert moved[0] >= fy0 - 12 and moved[1] >= fx0 - 12 and moved[2] <= fy1 + 12 and moved[3] <= fx1 + 12
        for y, x, h, w in labels.reads:  # the tiles' windows with their pixel of context, or the edit's mask cells
            assert fy0 - 1 <= y and fx0 - 1 <= x and y + h <= fy1 + 1 and x + w <= fx1 + 1, (y, x, h, w)
    after = fresh(engine, labels.data, Region(0, 0, 96, 96), settings)
    assert np.array_equal(live.rgb, after.rgb)
    same_record(live.provenance, after.provenance)
    history = live.provenance[LIVE_KEY]
    assert [e["box_source_px"] for e in history] == [list(box) for box in edits]
    assert [e["tiles_generated"] for e in history] == [1, 4, 1]
    assert all(e["settings"]["steps"] == 1 and e["settings"]["exact"] is settings.exact for e in history)
    # the mark's payload is the hash of the record as stored, its live history left out
    assert f"{record_hash(live.provenance):08x}" == live.provenance["watermark"]["record_hash"]


def test_a_lazy_region_reads_only_the_edited_tiles(nuclei: Any, fast: Any) -> None:
    """On a lazy labels array of 25 tiles, a regeneration reads the affected tiles' windows and the tissue cells
    under the edit, never the rest; pixels outside stay as they were and the result is a fresh run's."""
    labels = RecordingLabels(nuclei[1][:256, :256].astype(np.int32))
    live = start(EchoEngine(), labels, 256, fast)
    labels.reads.clear()
    before = live.rgb
    labels.data[220:226, 220:226] = 77
    update = run(regenerate(live, labels, (220, 220, 226, 226)))
    tiles = live.plan.grid.tiles_touching(219, 219, 227, 227)
    assert update.tiles == len(tiles) == 1
    lo = min(min(t.y for t in tiles), min(t.x for t in tiles)) - 1
    assert labels.reads
    for y, x, h, w in labels.reads:
        assert y >= lo and x >= lo and y + h <= 257 and x + w <= 257, (y, x, h, w)
    assert sum(h * w for _, _, h, w in labels.reads) < 256 * 256 / 4  # the tile, its context, its cells
    moved = changed_box(before, live.rgb)
    assert moved is not None and min(moved[:2]) >= lo - 12
    after = fresh(EchoEngine(), labels.data, Region(0, 0, 256, 256), fast)
    assert np.array_equal(live.rgb, after.rgb)


def test_an_edit_that_changes_the_tissue_mask(nuclei: Any, fast: Any) -> None:
    """Nuclei painted on glass grow the auto tissue mask: the tiles whose tissue changed are regenerated too, the
    record's hash changes (the tissue fraction), every chunk is marked again, and it is still a fresh run."""
    labels = np.zeros((256, 256), np.int32)
    labels[:64, :64] = nuclei[1][:64, :64]
    engine = EchoEngine()
    live = start(engine, labels, 256, fast)
    skipped, payload = live.tiles_skipped, live.provenance["watermark"]["payload"]
    assert skipped > 0  # glass tiles, far from the nuclei
    labels[200:250, 200:250] = nuclei[1][100:150, 100:150]
    update = run(regenerate(live, labels, (200, 200, 250, 250)))
    assert update.tiles > len(live.plan.grid.tiles_touching(199, 199, 251, 251))  # tissue grew around them
    assert live.tiles_skipped < skipped and live.provenance["watermark"]["payload"] != payload
    assert update.box == (0, 0, 256, 256)
    after = fresh(engine, labels, Region(0, 0, 256, 256), fast)
    assert np.array_equal(live.rgb, after.rgb)
    same_record(live.provenance, after.provenance)
    labels[200:250, 200:250] = 0  # and back: erased nuclei leave glass again
    run(regenerate(live, labels, (200, 200, 250, 250)))
    assert live.tiles_skipped == skipped and live.provenance["watermark"]["payload"] == payload
    assert np.array_equal(live.rgb, fresh(engine, labels, Region(0, 0, 256, 256), fast).rgb)


def test_bad_edits_say_why_and_change_nothing(nuclei: Any, fast: Any) -> None:
    labels = nuclei[1][:96, :96].astype(np.int32)
    live = start(EchoEngine(), labels, 96, fast)
    before, record = live.rgb, live.provenance
    with pytest.raises(GenerationError, match="Labels layer 'nuclei' is empty in this region: paint or load"):
        run(regenerate(live, np.zeros_like(labels), (0, 0, 96, 96)))
    with pytest.raises(GenerationError, match=r"changed shape \(\(96, 96\) → \(50, 50\)\): start live paint again"):
        run(regenerate(live, np.zeros((50, 50), np.int32), (0, 0, 5, 5)))
    assert np.array_equal(live.rgb, before) and live.provenance is record and live.edits == []
    big = np.zeros((200, 200), np.int32)  # an edit outside the region and its tiles' context regenerates nothing
    big[:96, :96] = labels
    live = start(EchoEngine(), big, 96, fast)
    big[150:160, 150:160] = 5
    update = run(regenerate(live, big, (150, 150, 160, 160)))
    assert update.tiles == 0 and update.box == (0, 0, 0, 0) and live.edits == []


def test_a_stopped_regeneration_changes_nothing(nuclei: Any, fast: Any) -> None:
    """Closing the generator after a step (a newer edit supersedes it) leaves the live region as it was; the next
    regeneration, covering both boxes, gives the fresh run."""
    labels = nuclei[1][:160, :160].astype(np.int32)
    live = start(EchoEngine(), labels, 160, fast)
    before = live.rgb
    labels[10:20, 10:20] = 500
    gen = regenerate(live, labels, (10, 10, 20, 20))
    next(gen)
    gen.close()
    assert np.array_equal(live.rgb, before) and live.edits == []
    labels[120:130, 120:130] = 501
    run(regenerate(live, labels, (10, 10, 130, 130)))
    assert np.array_equal(live.rgb, fresh(EchoEngine(), labels, Region(0, 0, 160, 160), fast).rgb)


# -- the dock: live paint in a real viewer (Xvfb) --------------------------------------------------------------------

WAIT_MS = 120_000


def test_live_paint_in_the_viewer_redraws_only_near_the_edit(labels_widget: Any, nuclei: Any, qtbot: Any) -> None:
    """Tick live, paint with the brush: only the tile under the stroke is redrawn in the output layer (in place);
    undo brings back the first run's pixels byte for byte; a script's assignment + refresh() is followed too; the
    record lists the redrawn boxes."""
    viewer, w = labels_widget
    labels = viewer.add_labels(nuclei[1][:96, 16:112].copy(), name="nuclei", scale=(MPP, MPP), units=("µm", "µm"))
    w._labels_layer.value = labels
    w.live.on = True
    out = viewer.layers[-1]
    assert out.name.endswith("[approximate] · live")
    qtbot.waitUntil(lambda: w.live.live is not None and not w.runner.running, timeout=WAIT_MS)
    assert "live: on" in w.live._text.value and "approximate (fast mode)" in w.live._text.value
    first = np.array(out.data)
    labels.brush_size = 5
    labels.paint((8, 8), 900)  # a stroke in tile (0, 0) alone
    qtbot.waitUntil(lambda: w.live.updates == 1 and w.live._worker is None, timeout=WAIT_MS)
    painted = np.array(out.data)
    moved = changed_box(first, painted)
    assert moved is not None and moved[2] <= 64 + 12 and moved[3] <= 64 + 12  # tile (0, 0) and the mark's reach
    edits = out.metadata["napari_crafts"][LIVE_KEY]
    assert [(e["box_source_px"], e["tiles_generated"]) for e in edits] == [([6, 6, 11, 11], 1)]
    labels.undo()  # the labels as they were: the first run's pixels again
    qtbot.waitUntil(lambda: w.live.updates == 2 and w.live._worker is None, timeout=WAIT_MS)
    assert np.array_equal(out.data, first)
    labels.data[80:86, 80:86] = 901  # a script: assign, then refresh()
    labels.refresh()
    qtbot.waitUntil(lambda: w.live.updates == 3 and w.live._worker is None, timeout=WAIT_MS)
    last = out.metadata["napari_crafts"][LIVE_KEY][-1]
    assert (last["box_source_px"], last["tiles_generated"]) == ([80, 80, 86, 86], 1)
    moved = changed_box(first, np.array(out.data))
    assert moved is not None and moved[0] >= 48 - 12 and moved[1] >= 48 - 12  # tile (1, 1) and the mark's reach
    # a newer edit supersedes a running regeneration (stopped within a step, its box merged into the next): the
    # layer then holds exactly a fresh run's pixels on the labels as they are
    labels.paint((20, 80), 902)
    w.live.flush()
    qtbot.waitUntil(lambda: w.live._worker is not None, timeout=WAIT_MS)
    labels.paint((80, 20), 903)
    w.live.flush()
    qtbot.waitUntil(lambda: w.live._worker is None and not w.live._timer.isActive(), timeout=WAIT_MS)
    live = w.live.live
    source = LabelsSource(np.array(labels.data), name="nuclei", mpp=MPP)
    assert np.array_equal(out.data, run(generate_region(live.engine, source, Region(0, 0, 96, 96), live.settings)).rgb)


def test_live_paint_refuses_bad_input_and_stops_when_its_layer_goes(
    labels_widget: Any, nuclei: Any, qtbot: Any, messages: list[tuple[str, str]]
) -> None:
    viewer, w = labels_widget
    stack = viewer.add_labels(np.stack([nuclei[1][:64, :64]] * 2), name="stack")
    w._labels_layer.value = stack
    w.live.on = True
    assert not w.live.on and len(viewer.layers) == 1
    assert (
        "error",
        "Live paint follows a 2-D labels layer; 'stack' has shape (2, 64, 64): use a 2-D layer (e.g. "
        "the slice as a new layer).",
    ) in messages
    flat = viewer.add_labels(nuclei[1][:64, :64].copy(), name="flat")  # no pixel size: the normal run's warning
    w._labels_layer.value = flat
    w.live.on = True
    assert sum("'flat' has no pixel size" in text for _, text in messages) == 1
    qtbot.waitUntil(lambda: w.live.live is not None and not w.runner.running, timeout=WAIT_MS)
    out = viewer.layers[-1]
    kept = np.array(out.data)
    flat.data[5:9, 5:9] = 700  # a script's edit, then refresh(): live sees it too
    flat.refresh()
    viewer.layers.remove(flat)  # before the pause is over: nothing more is drawn
    assert not w.live.on and w.live.layer is None
    assert (
        "warning",
        "'flat' was removed: live paint stopped (the synthetic layer keeps its last pixels).",
    ) in messages
    qtbot.wait(400)
    assert np.array_equal(out.data, kept) and w.live.updates == 0
    again = viewer.add_labels(nuclei[1][:64, :64].copy(), name="again", scale=(MPP, MPP), units=("µm", "µm"))
    w._labels_layer.value = again
    w.generate()  # a normal run is going: live waits for it
    w.live.on = True
    assert not w.live.on and ("error", LIVE_TEXT["busy"]) in messages
    w.runner.cancel()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT_MS)
